"""``rolebroker containers setup|teardown`` and ``doctor --containers``: click commands for
the root set-up in :mod:`rolebroker.cli.containers_setup`, registered on the main CLI group.

Without ``--apply`` the commands only print what they would run (as a script the user can
read or run by hand); with it they run the steps, through sudo when not root. Either way they
end with the user's own step, which no root command can do for them: the user manager holding
the container port (systemd/rolebroker-containers.socket).
"""

from __future__ import annotations

import os

import click

from rolebroker.cli import containers_setup as containers
from rolebroker.cli.doctor import Finding, Level, finding_lines

PORT_HELP = f"The daemon's container port [default: {containers.DEFAULT_CONTAINER_PORT}]"
LINK_HELP = "Interface type for the address: dummy, or bridge on kernels built without the dummy driver"
SOCKET_UNIT = "rolebroker-containers.socket"


def user_steps(plan: containers.Plan) -> str:
    """What the user runs as themselves after the root steps: their user manager holds the
    container port (or stops holding it), so that no other local user can take it while the
    daemon is stopped and catch a container's grant. Printed, never run: the unit file comes
    from a rolebroker checkout, and ``systemctl --user`` must not run under sudo."""
    if plan.action == "teardown":
        return (
            "# Then, as yourself (no sudo): stop holding the container port\n"
            f"systemctl --user disable --now {SOCKET_UNIT}\n"
        )
    where = f"{containers.ADDRESS}:{plan.container_port}"
    lines = [
        f"# Then, as yourself (no sudo): your user manager holds {where} while the daemon is",
        "# stopped, so no other local user can take the port and catch a container's grant",
        "# (with the systemd user service; a daemon run by hand leaves the port free while stopped).",
        "# Install the unit once, from a rolebroker checkout:",
        f"#   cp systemd/{SOCKET_UNIT} ~/.config/systemd/user/",
    ]
    if plan.container_port != containers.DEFAULT_CONTAINER_PORT:
        lines.append(
            f"# Container port {plan.container_port}: systemctl --user edit {SOCKET_UNIT}, with "
            f"ListenStream= (empty) then ListenStream={where}"
        )
    lines += [
        "systemctl --user daemon-reload",
        "systemctl --user stop rolebroker.service  # a running daemon may hold the port itself",
        f"systemctl --user enable --now {SOCKET_UNIT}",
        "systemctl --user start rolebroker.service",
        "# From boot and after you log out too (containers keep running; without it nothing",
        "# holds the port until you log in):",
        'loginctl enable-linger "$USER"',
    ]
    return "\n".join(lines) + "\n"


def _run(plan: containers.Plan, apply: bool) -> None:
    sudo = os.geteuid() != 0
    if not apply:
        click.echo(containers.render(plan, sudo=sudo), nl=False)
        click.echo(user_steps(plan), nl=False)
        click.echo(
            f"# nothing was changed: run `rolebroker containers {plan.action} --apply` to do this", err=True
        )
        return
    try:
        for line in containers.apply(plan):
            click.echo(line)
    except containers.ContainerSetupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(user_steps(plan), nl=False)


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
