"""What ``env`` prints and ``exec`` runs with: the profile checked, a grant for it alone
(never the master token), and the environment that points every SDK at the daemon.

No click here: ``env`` runs on every shell start, so quick.py calls this without loading
the command-line framework, and shell.py's click commands call the same functions. A
failure is a CommandFailed whose message says what to do; warnings go to ``warn``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rolebroker.cli import shellenv
from rolebroker.cli.client import ClientError, DaemonClient, DaemonError
from rolebroker.cli.grantclient import client_grant, write_grant_file
from rolebroker.config import DEFAULT_PORT, Settings


class CommandFailed(Exception):
    """The command cannot do its job; the message is one line saying what to do."""


@dataclass(frozen=True, slots=True)
class EnvRequest:
    """``rolebroker env PROFILE`` with its options, as parsed by click or by quick.py."""

    profile: str
    shell: str | None = None
    ttl: float | None = None
    export_token_file: bool = False
    check: bool = True
    token_file: Path | None = None
    """The --token-file given on the command line, repeated in the hint it prints."""


def client_environment(
    settings: Settings,
    profile: str,
    *,
    check: bool,
    export_token_file: bool,
    kind: str,
    ttl: float | None,
    warn: Callable[[str], None],
    environ: Mapping[str, str] = os.environ,
) -> shellenv.ShellEnv:
    """The environment for ``profile`` with a grant for it alone."""
    client = DaemonClient(settings)
    try:
        if check:
            _check_profile(client, profile, warn)
        name, grant = client_grant(client, kind, profile, ttl)
    except ClientError as exc:
        raise CommandFailed(str(exc)) from None
    grant_file = None
    if export_token_file:
        try:
            grant_file = write_grant_file(environ, name, grant)
        except OSError as exc:
            raise CommandFailed(f"cannot write the grant file: {exc}") from None
    return shellenv.plan(
        url=client.creds_url(profile),
        token=grant,
        profile=profile,
        environ=environ,
        aws_config=shellenv.read_aws_config(environ, profile),
        token_file=grant_file,
    )


def env_script(settings: Settings, request: EnvRequest, warn: Callable[[str], None]) -> str:
    """The lines ``env`` prints (notes go to ``warn``), ending with a comment that says how
    to load them."""
    chosen = request.shell or shellenv.detect_shell(os.environ)
    planned = client_environment(
        settings,
        request.profile,
        check=request.check,
        export_token_file=request.export_token_file,
        kind="env",
        ttl=request.ttl,
        warn=warn,
    )
    for note in planned.notes:
        warn(f"rolebroker: note: {note}")
    flags = port_flag(settings)
    if request.token_file:
        flags += f" --token-file {shlex.quote(str(request.token_file))}"
    hint = shellenv.eval_hint(chosen, f"rolebroker env {shlex.quote(request.profile)}{flags}")
    footer = f"rolebroker profile {request.profile} on 127.0.0.1:{settings.port}; run: {hint}"
    return planned.render(chosen, footer=footer)


def _check_profile(client: DaemonClient, profile: str, warn: Callable[[str], None]) -> None:
    """4xx: the user must act first (typo, SSO login, MFA); 5xx: a retry helps, so warn only."""
    try:
        client.credentials(profile)
    except DaemonError as exc:
        if exc.user_must_act:
            raise CommandFailed(
                f"rolebroker cannot serve profile {profile!r}: {exc.code}: {exc.message}"
            ) from None
        warn(
            f"rolebroker: warning: profile {profile!r} is not available right now ({exc.code}: "
            f"{exc.message}); SDKs will retry"
        )


def port_flag(settings: Settings) -> str:
    return "" if settings.port == DEFAULT_PORT else f" --port {settings.port}"
