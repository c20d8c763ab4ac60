"""The commands that set up clients: ``env``, ``exec``, ``creds``, ``credential-process``, ``export``.

Every command finds the daemon through the same settings as ``serve`` (``--port``,
``ROLEBROKER_PORT``, config.toml) and always talks to http://127.0.0.1:PORT with the
token file. Secrets are printed only by the commands whose job it is, and only on stdout.
They run on every shell start (``eval "$(rolebroker env prod)"``), so this module imports
nothing of the daemon side: see tests/test_cli_imports.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from rolebroker.cli import export, shellenv
from rolebroker.cli.client import DaemonClient, DaemonError
from rolebroker.cli.clientenv import CommandFailed, EnvRequest, client_environment, env_script
from rolebroker.cli.grants import DEFAULT_EXEC_TTL, duration
from rolebroker.cli.options import daemon_options, daemon_settings, reported, settings_for
from rolebroker.errors import BadReply

EXEC_FAILED = 125
"""``exec`` could not start the command (daemon, token or profile): like env(1) and docker."""


class ExecError(click.ClickException):
    exit_code = EXEC_FAILED


@click.command("env")
@click.argument("profile")
@click.option(
    "--shell",
    type=click.Choice(shellenv.SHELLS),
    help="Syntax of the output [default: from $SHELL, else bash]",
)
@click.option(
    "--ttl",
    help="The grant's lifetime, e.g. 30m, 2h, 1d [default: no expiry; the untimed grant of the "
    "profile is reused by every shell]",
)
@click.option(
    "--export-token-file",
    is_flag=True,
    help="Write the grant to a private file ($XDG_RUNTIME_DIR/rolebroker/grants/NAME, 0600) and export "
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE instead of AWS_CONTAINER_AUTHORIZATION_TOKEN (unset): "
    "re-read on every load by newer SDKs, ignored by the AWS CLI v2 before 2.15, aws-sdk-js v2 "
    "(Serverless v3) and Java.",
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Do not fetch the profile's credentials first (the grant still comes from the daemon).",
)
@daemon_options
def env_command(
    profile: str,
    shell: str | None,
    ttl: str | None,
    export_token_file: bool,
    no_check: bool,
    port: int | None,
    token_file: Path | None,
) -> None:
    """Print shell lines that point every AWS SDK and CLI at PROFILE.

    \b
    bash/zsh:  eval "$(rolebroker env PROFILE)"
    fish:      rolebroker env PROFILE --shell fish | source

    Exports AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:PORT/creds/PROFILE and
    AWS_CONTAINER_AUTHORIZATION_TOKEN set to a grant for PROFILE only (never the daemon's
    master token: `rolebroker grants` lists it), the profile's region (unless you set one), and unsets
    what SDKs would use first: AWS_PROFILE, AWS_DEFAULT_PROFILE, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and more.
    If [default] in ~/.aws/credentials holds keys, AWS_SHARED_CREDENTIALS_FILE=/dev/null too.
    The profile is fetched once first, so typos fail here and the first SDK call is warm.
    """
    settings = daemon_settings(port, token_file)
    request = EnvRequest(profile, shell, duration(ttl), export_token_file, not no_check, token_file)
    try:
        script = env_script(settings, request, warn=_warn)
    except CommandFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(script, nl=False)


class ExecCommand(click.Command):
    """``exec PROFILE [OPTIONS] [--] COMMAND...``: rolebroker's options may come before or
    after the profile, like every other command's. Everything after ``--``, or from the
    first argument after the profile that is not an option, belongs to COMMAND."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, options_first(self, ctx, args))


def options_first(command: click.Command, ctx: click.Context, args: Sequence[str]) -> list[str]:
    """``args`` reordered as ``OPTIONS PROFILE -- COMMAND...`` for a parser that stops at the
    first positional argument (so COMMAND's own options are never read as rolebroker's)."""
    with_value = {
        name
        for param in command.get_params(ctx)
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for name in param.opts
    }
    options: list[str] = []
    profile: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            return [*options, *profile, "--", *rest] if profile else [*options, "--", *rest]
        if arg.startswith("-") and arg != "-":
            options.append(arg)
            if arg in with_value and rest:
                options.append(rest.pop(0))
        elif not profile:
            profile.append(arg)
        else:
            return [*options, *profile, "--", arg, *rest]
    return [*options, *profile]


@click.command("exec", cls=ExecCommand, context_settings={"allow_interspersed_args": False})
@daemon_options
@click.option("--ttl", help="The grant's lifetime, e.g. 30m, 2h, 1d [default: 12h]")
@click.argument("profile")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_command(
    profile: str, command: Sequence[str], ttl: str | None, port: int | None, token_file: Path | None
) -> None:
    """Run COMMAND with PROFILE's credentials from the daemon.

    \b
    rolebroker exec prod -- aws s3 ls
    rolebroker exec prod --port 9961 -- env
    rolebroker exec prod            # a shell ($SHELL) set up for prod

    Options before `--` are rolebroker's, everything after it is COMMAND's. Without `--`,
    COMMAND starts at the first argument after PROFILE that is not an option.

    The command gets the environment `rolebroker env` prints, with a grant for PROFILE
    alone that expires after --ttl (12 h by default), whatever the calling shell has set
    (AWS_PROFILE, access keys, ...). It replaces rolebroker (exec), so signals go
    straight to it and its exit code is the exit code. Exit 125 if rolebroker could not
    start it (daemon not running, unknown profile), 127 if COMMAND is not found.
    """
    settings = daemon_settings(port, token_file)
    argv = list(command[1:] if command[:1] == ("--",) else command)
    argv = argv or [os.environ.get("SHELL") or "/bin/sh"]
    seconds = duration(ttl)
    try:
        planned = client_environment(
            settings,
            profile,
            check=True,
            export_token_file=False,
            kind="exec",
            ttl=DEFAULT_EXEC_TTL if seconds is None else seconds,
            warn=_warn,
        )
    except CommandFailed as exc:
        raise ExecError(str(exc)) from None
    for note in planned.notes:
        click.echo(f"rolebroker: note: {note}", err=True)
    environment = planned.apply(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, environment)  # noqa: S606  (exec, like env(1): no shell involved)
    except FileNotFoundError:
        _exit(127, f"command not found: {argv[0]}")
    except PermissionError:
        _exit(126, f"permission denied: {argv[0]}")
    except OSError as exc:
        _exit(126, f"cannot run {argv[0]}: {exc.strerror}")


def _exit(code: int, message: str) -> NoReturn:
    click.echo(f"rolebroker: {message}", err=True)
    sys.exit(code)


def _warn(message: str) -> None:
    click.echo(message, err=True)


@click.command("creds")
@click.argument("profile")
@daemon_options
def creds_command(profile: str, port: int | None, token_file: Path | None) -> None:
    """Print PROFILE's credentials as the ECS JSON the SDKs get (what curl would print)."""
    settings = daemon_settings(port, token_file)
    with reported():
        reply = DaemonClient(settings).credentials(profile)
    click.echo(reply.text)


@click.command("credential-process")
@click.argument("profile")
@daemon_options
def credential_process_command(profile: str, port: int | None, token_file: Path | None) -> None:
    """Print PROFILE's credentials as credential_process JSON, for tools that only read profiles.

    \b
    [profile prod-rb]
    credential_process = rolebroker credential-process prod

    Refuses to run when the daemon itself started it (a profile the daemon serves whose
    credential_process is rolebroker would wait on itself).
    """
    click.echo(_issued(profile, port, token_file, "process"), nl=False)


@click.command("export")
@click.argument("profile")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(export.FORMATS),
    default="env",
    show_default=True,
    help="env: POSIX export lines; fish: set -gx; powershell: $Env:; process: credential_process "
    "JSON; json: the ECS JSON.",
)
@daemon_options
def export_command(profile: str, fmt: str, port: int | None, token_file: Path | None) -> None:
    """Print PROFILE's current credentials as static values, for scripts that need keys.

    \b
    eval "$(rolebroker export prod)"                      # bash / zsh
    rolebroker export prod --format fish | source
    rolebroker export prod --format powershell | Invoke-Expression

    They are not renewed: prefer `rolebroker env` or `exec`, which keep the SDK asking the
    daemon. The values expire at AWS_CREDENTIAL_EXPIRATION.
    """
    click.echo(_issued(profile, port, token_file, fmt), nl=False)


def _issued(profile: str, port: int | None, token_file: Path | None, fmt: str) -> str:
    """The daemon's credentials for ``profile`` in ``fmt``; errors name the daemon's code."""
    inside = os.environ.get(export.INSIDE_DAEMON)
    if inside:
        raise click.ClickException(
            f"refusing to get profile {profile!r} from rolebroker: this command was started by the "
            f"rolebroker daemon itself (pid {inside}), because a profile it serves has a credential_process "
            "that runs rolebroker, so the daemon would wait on itself. Give the profiles the daemon serves "
            "a source of their own (keys, SSO, source_profile) and use the rolebroker credential_process "
            "only in profiles for other tools"
        )
    settings = settings_for(port, token_file)
    with reported():
        reply = DaemonClient(settings).credentials(profile)
        body = reply.json_object()
        try:
            credentials = export.IssuedCredentials.from_ecs(body or {})
        except export.BadCredentials as exc:
            raise DaemonError(BadReply.status, BadReply.code, f"{exc}; is that rolebroker?") from None
    return export.render(credentials, fmt, ecs_json=reply.text)


COMMANDS: tuple[click.Command, ...] = (
    env_command,
    exec_command,
    creds_command,
    credential_process_command,
    export_command,
)
