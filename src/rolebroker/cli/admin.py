"""The commands that look after the daemon: ``status``, ``token``, ``reload``, ``mfa``, ``doctor``.

Errors are one line that says what to do. ``status`` reads the typed /status document
(statusdoc.py) the daemon builds; ``token`` is printed only on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rolebroker.authtoken import new_token, write_token
from rolebroker.cli import shellenv
from rolebroker.cli.client import DaemonClient, NotRunning
from rolebroker.cli.options import daemon_options, daemon_settings, reported
from rolebroker.cli.statusformat import format_status
from rolebroker.config import Settings
from rolebroker.mfacode import valid_code

if TYPE_CHECKING:
    pass


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="The daemon's /status document, for scripts.")
@daemon_options
def status_command(as_json: bool, port: int | None, token_file: Path | None) -> None:
    """Show every profile: state, expiry, last refresh, last error. Never a secret."""
    settings = daemon_settings(port, token_file)
    with reported():
        status = DaemonClient(settings).status()
    if as_json:
        click.echo(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_status(status, time.time()), nl=False)


@click.command("token")
@click.option(
    "--rotate",
    is_flag=True,
    help="Make a new token; the old one is refused at once. Shells that exported it must re-run "
    "rolebroker env.",
)
@daemon_options
def token_command(rotate: bool, port: int | None, token_file: Path | None) -> None:
    """Print the daemon's token (no newline when piped): curl -H "Authorization: $(rolebroker token)".

    With --rotate, the daemon (after proving it is rolebroker) writes a new token to its token
    file and refuses the old one from then on; when it is not running, the file is rewritten.
    """
    settings = daemon_settings(port, token_file)
    if rotate:
        _rotate_token(settings)
        return
    with reported():
        token = DaemonClient(settings).token()
    click.echo(token, nl=sys.stdout.isatty())


def _rotate_token(settings: Settings) -> None:
    """Through the daemon when one answers (after its proof); else rewrite the file, which
    a daemon started later reads."""
    client = DaemonClient(settings)
    old: str | None = None
    with reported():
        try:
            old = client.token()  # no file: asks /healthz first, which starts a socket-activated daemon
            client.rotate_token()
            where = f"the daemon on 127.0.0.1:{settings.port} rotated the token"
        except NotRunning:
            try:
                write_token(settings.token_file, new_token())
            except OSError as exc:
                raise click.ClickException(f"cannot write {settings.token_file}: {exc}") from None
            where = f"rolebroker is not running on 127.0.0.1:{settings.port}; wrote a new token"
    done = f"rolebroker: {where} in {settings.token_file}; the old token is refused from now on"
    click.echo(done, err=True)
    from rolebroker import procfs  # rarely used: not imported by every command

    users = procfs.processes_exporting(shellenv.TOKEN, old) if old else []
    rerun = 'eval "$(rolebroker env PROFILE)"'
    if users:
        click.echo(
            f"rolebroker: these processes exported the old token: in each shell re-run {rerun}, "
            "restart the others:",
            err=True,
        )
        for process in users:
            click.echo(f"  pid {process.pid}: {process.command}", err=True)
    else:
        click.echo(
            f"rolebroker: no running process of yours exports the old token; any shell that did "
            f"(rolebroker env) must re-run {rerun}, and programs started from it must be restarted.",
            err=True,
        )


@click.command("reload")
@daemon_options
def reload_command(port: int | None, token_file: Path | None) -> None:
    """Make the daemon re-read the AWS config and its config.toml (like SIGHUP).

    Cached credentials of profiles whose definition did not change are kept.
    """
    settings = daemon_settings(port, token_file)
    with reported():
        result = DaemonClient(settings).reload()
    click.echo(f"rolebroker reloaded: {result.get('profiles', '?')} profiles")


@click.command("mfa")
@click.argument("profile")
@click.argument("code", required=False)
@daemon_options
def mfa_command(profile: str, code: str | None, port: int | None, token_file: Path | None) -> None:
    """Hand an MFA code to the running daemon.

    One code unlocks every profile that uses the same MFA device and source keys, for the
    life of the MFA session (12 h unless mfa_session_duration says otherwise). Without
    CODE it is asked for on a terminal, or read as one line from stdin.
    """
    settings = daemon_settings(port, token_file)
    if code is None:
        if sys.stdin.isatty():
            code = str(click.prompt(f"MFA code for {profile}", prompt_suffix=": "))
        else:
            code = sys.stdin.readline()
    code = code.strip()
    if not valid_code(code):
        raise click.UsageError("an MFA code is 6 digits")
    with reported():
        result = DaemonClient(settings).submit_mfa(profile, code)
    unlocked = ", ".join(result.get("profiles") or [profile])
    click.echo(
        f"MFA session for {result.get('mfa_serial')} active until {result.get('expires_at')}; "
        f"unlocked: {unlocked}"
    )


@click.command("doctor")
@click.argument("profile", required=False)
@click.option(
    "--port80", is_flag=True, help="Also check the `rolebroker port80` redirect and tokenless mode."
)
@click.option(
    "--containers",
    "containers",
    is_flag=True,
    help="Check the path containers take instead (169.254.170.2, rules, boot unit, the daemon's listener)",
)
@click.option(
    "--probe",
    is_flag=True,
    help="With --containers: also send a request from a throwaway container network (root; through sudo)",
)
@daemon_options
def doctor_command(
    profile: str | None,
    port80: bool,
    containers: bool,
    probe: bool,
    port: int | None,
    token_file: Path | None,
) -> None:
    """Check the daemon and this environment; explain every problem and its fix.

    Checks that the daemon answers and accepts the token, that PROFILE (and the profile in
    AWS_CONTAINER_CREDENTIALS_FULL_URI) can be served, and everything that makes SDKs bypass
    the endpoint: access keys or AWS_PROFILE in the environment, a [default] profile with
    credentials, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, a FULL_URI host or port some SDKs
    refuse, token variables that disagree or end with a newline. A token that is a grant is
    named with its profiles and expiry. With --port80, also whether `curl localhost/creds/P`
    reaches this daemon and whether tokenless mode is on. Exits 1 on any problem.
    """
    if containers:
        from rolebroker.cli.containers import doctor_containers

        doctor_containers(daemon_settings(port, token_file), probe=probe)
        return
    if probe:
        raise click.UsageError("--probe goes with --containers")
    from rolebroker.cli import doctor

    settings = daemon_settings(port, token_file)
    findings = doctor.diagnose(settings, os.environ, profile, port80=port80)
    click.echo(doctor.render(findings, settings), nl=False)
    if doctor.has_problems(findings):
        sys.exit(1)


COMMANDS: tuple[click.Command, ...] = (
    status_command,
    token_command,
    reload_command,
    mfa_command,
    doctor_command,
)
