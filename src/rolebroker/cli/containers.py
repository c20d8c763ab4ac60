"""``rolebroker containers setup|teardown`` and ``doctor --containers``: click commands for
the root set-up in :mod:`rolebroker.cli.containers_setup`, registered on the main CLI group.

Without ``--apply`` the commands only print what they would run (as a script the user can
read or run by hand); with it they run the steps, through sudo when not root. Either way they
end with the user's own step, which no root command can do for them: the user manager holding
the container port (systemd/rolebroker-containers.socket).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Iterator
from dataclasses import replace

import click

from rolebroker.cli import containers_setup as containers
from rolebroker.cli.doctor import Finding, Level, finding_lines
from rolebroker.cli.options import settings_for
from rolebroker.config import Settings

PORT_HELP = f"The daemon's container port [default: {containers.DEFAULT_CONTAINER_PORT}]"
LINK_HELP = "Interface type for the address: dummy, or bridge on kernels built without the dummy driver"
SOCKET_UNIT = containers.SOCKET_UNIT


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


def render_findings(findings: list[Finding], title: str = "") -> str:
    """The ``doctor --containers`` section, in the doctor's own layout."""
    lines = [
        title
        or f"rolebroker doctor --containers: {containers.ADDRESS}:{containers.ECS_PORT} for local containers",
        "",
        *finding_lines(findings),
    ]
    return "\n".join(lines) + "\n"


def doctor_containers(settings: Settings, *, probe: bool = False) -> None:
    """Body of ``doctor --containers [--probe]``: prints the findings, exits 1 on a problem."""
    from rolebroker.cli import containers_doctor

    system = containers_doctor.System.real(os.environ)
    with _cleaned_up_on_interrupt():
        findings = containers_doctor.diagnose(settings, run_probe=probe, system=system)
    click.echo(render_findings(findings), nl=False)
    if any(f.level is Level.PROBLEM for f in findings):
        raise SystemExit(1)


@contextlib.contextmanager
def _cleaned_up_on_interrupt() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a probe: it has removed what it made; say so, exit 130."""
    from rolebroker.cli.containers_probe import Interrupted

    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        click.echo("interrupted; the probe removed everything it had made", err=True)
        raise SystemExit(130) from None


@containers_group.command("probe")
@click.option("--port", type=click.IntRange(1024, 65535), default=None, help=PORT_HELP)
@click.option(
    "--apply",
    "apply_",
    is_flag=True,
    help="When not root: run it through sudo instead of printing the command",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.2, 30),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the answer",
)
@click.option(
    "--json", "as_json", is_flag=True, hidden=True, help="Findings as JSON (doctor --probe reads it)"
)
def probe_command(port: int | None, apply_: bool, timeout: float, as_json: bool) -> None:
    """Send one request as a container does, from a throwaway bridge and network namespace,
    to 169.254.170.2:80, and say where it ends (needs root; removes everything it made)."""
    from rolebroker.cli import containers_doctor

    port = port or settings_for().container_port
    if os.geteuid() != 0:
        argv = containers_doctor.probe_argv(port)
        if not apply_:
            click.echo(f"sudo {shlex.join(argv)}")
            click.echo(
                "# nothing was run: the probe needs root; `rolebroker containers probe --apply` runs it "
                "through sudo",
                err=True,
            )
            return
        try:
            os.execvp("sudo", ["sudo", "--", *argv, "--timeout", str(timeout)])  # noqa: S606  (exec, no shell)
        except OSError as exc:
            raise click.ClickException(
                f"cannot run sudo ({exc.strerror}); as root run: {shlex.join(argv)}"
            ) from None
    system = replace(containers_doctor.System.real(os.environ), timeout=timeout)
    with _cleaned_up_on_interrupt():
        rules, result = containers_doctor.root_findings(port, system)
    findings = result.findings
    if as_json:
        wiring = result.wiring
        body = {
            "rules": containers_doctor.findings_to_json([rules])[0],
            "probe": containers_doctor.findings_to_json(findings),
            "made": {  # what the probe created and removed: for checks that nothing is left
                "bridge": wiring.bridge if wiring else None,
                "veth": wiring.veth if wiring else None,
                "holder_pid": result.holder_pid,
            },
        }
        click.echo(json.dumps(body))
        return
    title = f"rolebroker containers probe: a container's request to {containers.ADDRESS}:80 (port {port})"
    click.echo(render_findings([rules, *findings], title), nl=False)
    if any(f.level is Level.PROBLEM for f in [rules, *findings]):
        raise SystemExit(1)


COMMANDS: tuple[click.Command, ...] = (containers_group,)
