"""``rolebroker containers setup|teardown`` and ``doctor --containers``: click commands for
the root set-up in :mod:`rolebroker.cli.containers_setup`, registered on the main CLI group.

Without ``--apply`` the commands only print what they would run (as a script the user can
read or run by hand); with it they run the steps, through sudo when not root.
"""

from __future__ import annotations

import os

import click

from rolebroker.cli import containers_setup as containers
from rolebroker.cli.doctor import Finding, Level, finding_lines

PORT_HELP = f"The daemon's container port [default: {containers.DEFAULT_CONTAINER_PORT}]"
LINK_HELP = "Interface type for the address: dummy, or bridge on kernels built without the dummy driver"


def _run(plan: containers.Plan, apply: bool) -> None:
    sudo = os.geteuid() != 0
    if not apply:
        click.echo(containers.render(plan, sudo=sudo), nl=False)
        click.echo(
            f"# nothing was changed: run `rolebroker containers {plan.action} --apply` to do this", err=True
        )
        return
    try:
        for line in containers.apply(plan):
            click.echo(line)
    except containers.ContainerSetupError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("containers")
def containers_group() -> None:
    """Let local Docker and Podman containers reach rolebroker at 169.254.170.2 (needs root)."""


@containers_group.command("setup")
@click.option(
    "--apply", "apply_", is_flag=True, help="Run the commands (through sudo) instead of printing them"
)
@click.option(
    "--port", type=click.IntRange(1024, 65535), default=containers.DEFAULT_CONTAINER_PORT, help=PORT_HELP
)
@click.option("--link-kind", type=click.Choice(["dummy", "bridge"]), default="dummy", help=LINK_HELP)
def setup_command(apply_: bool, port: int, link_kind: containers.LinkKind) -> None:
    """Put 169.254.170.2 on rolebroker0, forward container port 80 to the daemon, keep LAN
    neighbours out, and re-apply it all at boot. Safe to run again."""
    _run(containers.setup_plan(port, link_kind=link_kind), apply_)


@containers_group.command("teardown")
@click.option(
    "--apply", "apply_", is_flag=True, help="Run the commands (through sudo) instead of printing them"
)
def teardown_command(apply_: bool) -> None:
    """Remove everything `containers setup` added. Safe when nothing is there."""
    _run(containers.teardown_plan(), apply_)


def render_findings(findings: list[Finding]) -> str:
    """The ``doctor --containers`` section, in the doctor's own layout."""
    lines = [
        f"rolebroker doctor --containers: {containers.ADDRESS}:{containers.ECS_PORT} for local containers",
        "",
        *finding_lines(findings),
    ]
    return "\n".join(lines) + "\n"


def doctor_containers(port: int = containers.DEFAULT_CONTAINER_PORT) -> None:
    """Body of ``doctor --containers``: prints the findings, exits 1 on a problem."""
    findings = containers.check(port)
    click.echo(render_findings(findings), nl=False)
    if any(f.level is Level.PROBLEM for f in findings):
        raise SystemExit(1)


COMMANDS: tuple[click.Command, ...] = (containers_group,)
