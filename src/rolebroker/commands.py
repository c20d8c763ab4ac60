"""The commands around the daemon: shell set-up, status, doctor, demo.

Every command finds the daemon through the same settings as ``serve`` (``--port``,
``ROLEBROKER_PORT``, config.toml) and always talks to http://127.0.0.1:PORT with the
token file. Errors are one line that says what to do; secrets are printed only by the
commands whose job it is (``creds``, ``credential-process``, ``export``, ``token``, ``env``),
and only on stdout.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import shlex
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from rolebroker import discovery, export, procfs, shellenv
from rolebroker.authtoken import new_token, read_token, write_token
from rolebroker.client import (
    ClientError,
    DaemonClient,
    DaemonError,
    NotRunning,
    TokenUnavailable,
    start_hint,
)
from rolebroker.config import DEFAULT_PORT, Settings, SettingsError, load_settings
from rolebroker.errors import BadReply
from rolebroker.mfa import valid_code

F = TypeVar("F", bound=Callable[..., Any])

EXEC_FAILED = 125
"""``exec`` could not start the command (daemon, token or profile): like env(1) and docker."""


class ExecError(click.ClickException):
    exit_code = EXEC_FAILED


def daemon_options(command: F) -> F:
    """--port and --token-file, with the same meaning and precedence as for ``serve``."""
    command = click.option(
        "--token-file",
        type=click.Path(path_type=Path),
        help="The daemon's token file [env ROLEBROKER_TOKEN_FILE; default $XDG_RUNTIME_DIR/rolebroker/token]",
    )(command)
    return click.option(
        "--port", type=int, help=f"The daemon's port [env ROLEBROKER_PORT; default {DEFAULT_PORT}]"
    )(command)


def settings_for(port: int | None = None, token_file: Path | None = None, **flags: Any) -> Settings:
    """Settings with these flags over env and config.toml, as ``serve`` reads them; a bad
    value is a usage error, not a traceback."""
    try:
        return load_settings({"port": port, "token_file": token_file, **flags})
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def daemon_settings(port: int | None, token_file: Path | None) -> Settings:
    """The settings of a command that talks to the daemon: as ``serve`` reads them, except
    that when no flag, ROLEBROKER_PORT or config.toml names a port, the port of the running
    daemon's discovery file (daemon.json) wins over the default."""
    settings = settings_for(port, token_file)
    if port is None and not os.environ.get("ROLEBROKER_PORT") and not _config_names_port(settings):
        found = discovery.read(discovery.discovery_file(os.environ))
        if found is not None:
            settings = replace(settings, port=found.port)
    return settings


def _config_names_port(settings: Settings) -> bool:
    if settings.config_file is None:
        return False
    try:
        with settings.config_file.open("rb") as handle:
            return "port" in tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return False


@contextlib.contextmanager
def reported(error: type[click.ClickException] = click.ClickException) -> Iterator[None]:
    """A ClientError becomes a one-line error and a non-zero exit, never a traceback."""
    try:
        yield
    except ClientError as exc:
        raise error(str(exc)) from None


# -- env and exec --------------------------------------------------------------------------


@click.command("env")
@click.argument("profile")
@click.option(
    "--shell",
    type=click.Choice(shellenv.SHELLS),
    help="Syntax of the output [default: from $SHELL, else bash]",
)
@click.option(
    "--export-token-file",
    is_flag=True,
    help="Export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE instead of AWS_CONTAINER_AUTHORIZATION_TOKEN "
    "(unset): re-read on every load by newer SDKs, ignored by the AWS CLI v2 before 2.15, aws-sdk-js v2 "
    "(Serverless v3) and Java.",
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Do not ask the daemon first (it must have written its token file already).",
)
@daemon_options
def env_command(
    profile: str,
    shell: str | None,
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
    AWS_CONTAINER_AUTHORIZATION_TOKEN, the profile's region (unless you set one), and unsets
    what SDKs would use first: AWS_PROFILE, AWS_DEFAULT_PROFILE, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and more.
    If [default] in ~/.aws/credentials holds keys, AWS_SHARED_CREDENTIALS_FILE=/dev/null too.
    The profile is fetched once first, so typos fail here and the first SDK call is warm.
    """
    settings = daemon_settings(port, token_file)
    chosen = shell or shellenv.detect_shell(os.environ)
    planned = _client_environment(settings, profile, check=not no_check, export_token_file=export_token_file)
    for note in planned.notes:
        click.echo(f"rolebroker: note: {note}", err=True)
    flags = _port_flag(settings) + (f" --token-file {_quote_arg(str(token_file))}" if token_file else "")
    hint = shellenv.eval_hint(chosen, f"rolebroker env {_quote_arg(profile)}{flags}")
    footer = f"rolebroker profile {profile} on 127.0.0.1:{settings.port}; run: {hint}"
    click.echo(planned.render(chosen, footer=footer), nl=False)


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
@click.argument("profile")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_command(profile: str, command: Sequence[str], port: int | None, token_file: Path | None) -> None:
    """Run COMMAND with PROFILE's credentials from the daemon.

    \b
    rolebroker exec prod -- aws s3 ls
    rolebroker exec prod --port 9961 -- env
    rolebroker exec prod            # a shell ($SHELL) set up for prod

    Options before `--` are rolebroker's, everything after it is COMMAND's. Without `--`,
    COMMAND starts at the first argument after PROFILE that is not an option.

    The command gets the environment `rolebroker env` prints, whatever the calling shell
    has set (AWS_PROFILE, access keys, ...). It replaces rolebroker (exec), so signals go
    straight to it and its exit code is the exit code. Exit 125 if rolebroker could not
    start it (daemon not running, unknown profile), 127 if COMMAND is not found.
    """
    settings = daemon_settings(port, token_file)
    argv = list(command[1:] if command[:1] == ("--",) else command)
    argv = argv or [os.environ.get("SHELL") or "/bin/sh"]
    planned = _client_environment(settings, profile, check=True, export_token_file=False, error=ExecError)
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


def _client_environment(
    settings: Settings,
    profile: str,
    *,
    check: bool,
    export_token_file: bool,
    error: type[click.ClickException] = click.ClickException,
) -> shellenv.ShellEnv:
    client = DaemonClient(settings)
    with reported(error):
        if check:
            _check_profile(client, profile, error)
        token = client.token() if check else _token_without_daemon(settings)
    return shellenv.plan(
        url=client.creds_url(profile),
        token=token,
        profile=profile,
        environ=os.environ,
        aws_config=shellenv.read_aws_config(os.environ, profile),
        token_file=settings.token_file if export_token_file else None,
    )


def _check_profile(client: DaemonClient, profile: str, error: type[click.ClickException]) -> None:
    """4xx: the user must act first (typo, SSO login, MFA); 5xx: a retry helps, so warn only."""
    try:
        client.credentials(profile)
    except DaemonError as exc:
        if exc.user_must_act:
            raise error(f"rolebroker cannot serve profile {profile!r}: {exc.code}: {exc.message}") from None
        click.echo(
            f"rolebroker: warning: profile {profile!r} is not available right now ({exc.code}: "
            f"{exc.message}); SDKs will retry",
            err=True,
        )


def _token_without_daemon(settings: Settings) -> str:
    try:
        return read_token(settings.token_file)
    except FileNotFoundError:
        raise TokenUnavailable(
            f"no token file at {settings.token_file}: the daemon writes it when it starts; "
            + start_hint(settings)
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenUnavailable(f"cannot read the token file {settings.token_file}: {exc}") from None


def _port_flag(settings: Settings) -> str:
    return "" if settings.port == DEFAULT_PORT else f" --port {settings.port}"


def _quote_arg(value: str) -> str:
    return shlex.quote(value)


# -- talking to the daemon --------------------------------------------------------------------


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="The daemon's /status document, for scripts.")
@daemon_options
def status_command(as_json: bool, port: int | None, token_file: Path | None) -> None:
    """Show every profile: state, expiry, last refresh, last error. Never a secret."""
    settings = daemon_settings(port, token_file)
    with reported():
        status = DaemonClient(settings).status()
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        click.echo(format_status(status, time.time()), nl=False)


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
@daemon_options
def doctor_command(profile: str | None, port: int | None, token_file: Path | None) -> None:
    """Check the daemon and this environment; explain every problem and its fix.

    Checks that the daemon answers and accepts the token, that PROFILE (and the profile in
    AWS_CONTAINER_CREDENTIALS_FULL_URI) can be served, and everything that makes SDKs bypass
    the endpoint: access keys or AWS_PROFILE in the environment, a [default] profile with
    credentials, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, a FULL_URI host or port some SDKs
    refuse, token variables that disagree or end with a newline. Exits 1 on any problem.
    """
    from rolebroker import doctor

    settings = daemon_settings(port, token_file)
    findings = doctor.diagnose(settings, os.environ, profile)
    click.echo(doctor.render(findings, settings), nl=False)
    if doctor.has_problems(findings):
        sys.exit(1)


@click.command("demo")
@click.option(
    "--port", type=int, help=f"Port for the demo daemon [env ROLEBROKER_PORT; default {DEFAULT_PORT}]"
)
def demo_command(port: int | None) -> None:
    """Run rolebroker against an embedded local STS (needs moto: make demo in a checkout,
    or pipx install '.[demo]').

    Generates a throw-away AWS config, credentials and token with profiles dev and prod
    (chained across accounts), prints commands to try, and writes nothing under your home.
    """
    from rolebroker import demo

    demo.run(settings_for(port, None))


# -- status table ------------------------------------------------------------------------------


def format_status(status: dict[str, Any], now: float) -> str:
    """A table a human can read at a glance, then the full error messages."""
    lines = [
        f"rolebroker {status.get('version', '?')} on {status.get('listen', '?')} "
        f"(pid {status.get('pid', '?')}, up {_duration(status.get('uptime_seconds'))}), "
        f"{status.get('sts_calls_total', 0)} STS calls, "
        f"renews {_duration(status.get('refresh_before_seconds'))} before expiry",
    ]
    files = status.get("aws_config_files") or []
    if files:
        lines.append("AWS config: " + ", ".join(map(str, files)))
    config_error = status.get("config_error")
    if isinstance(config_error, dict) and profiles_in(status):
        lines.append(
            f"AWS config error: {config_error.get('code')}: {config_error.get('message')} "
            "(serving the last good version)"
        )
    lines.append("")
    profiles = profiles_in(status)
    header = ("PROFILE", "STATE", "EXPIRES IN", "LAST REFRESH", "LAST ERROR")
    rows = [header]
    details: list[str] = []
    for profile in profiles:
        error = profile.get("last_error") or {}
        error_cell = "-"
        if error:
            when = _ago(error.get("at"), now)
            error_cell = str(error.get("code", "?")) + (f" ({when})" if when != "-" else "")
            details.append(f"{profile.get('name')}: {error.get('code')}: {error.get('message')}")
        rows.append(
            (
                str(profile.get("name", "?")),
                str(profile.get("state", "?")),
                _duration(profile.get("expires_in_seconds")),
                _ago(profile.get("last_refresh"), now),
                error_cell,
            )
        )
    if not profiles and isinstance(config_error, dict):
        lines.append(
            "No profiles: the daemon could not read the AWS config "
            f"({config_error.get('code')}: {config_error.get('message')}); fix it, then: rolebroker reload"
        )
    elif not profiles:
        lines.append("No profiles in the AWS config.")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
    if details:
        lines += ["", *details]
    return "\n".join(lines) + "\n"


def profiles_in(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in status.get("profiles") or [] if isinstance(p, dict)]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    total = int(seconds)
    if total < 0:
        return "expired"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _ago(stamp: Any, now: float) -> str:
    if not isinstance(stamp, str):
        return "-"
    try:
        then = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return stamp
    return f"{_duration(max(0, now - then))} ago"


COMMANDS: tuple[click.Command, ...] = (
    env_command,
    exec_command,
    status_command,
    creds_command,
    credential_process_command,
    export_command,
    token_command,
    reload_command,
    mfa_command,
    doctor_command,
    demo_command,
)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
