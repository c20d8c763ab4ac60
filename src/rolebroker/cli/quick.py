"""The ``rolebroker`` program: the commands a shell start runs answer without click.

``eval "$(rolebroker env prod)"`` in a shell rc file, ``rolebroker token`` in a curl alias
and ``rolebroker status`` in a prompt run many times a day, and importing click alone costs
about three times the interpreter's own start. So the plain forms of ``token``, ``env`` and
``status`` are read here by a small parser and run through the same click-free functions the
click commands use (daemonsettings.py, clientenv.py, statusformat.py). Anything else (help,
a flag this parser does not know, a value it cannot read, a bad setting) goes to click,
which parses it again and answers as always: this module only ever declines, it never
answers differently. tests/test_quick.py runs every form through both and compares.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rolebroker.config import Settings

DAEMON_OPTIONS = ("--port", "--token-file")

COMMAND_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str], int]] = {
    # command: (flags, options taking a value, positional arguments)
    "token": (frozenset(), frozenset(DAEMON_OPTIONS), 0),
    "status": (frozenset({"--json"}), frozenset(DAEMON_OPTIONS), 0),
    "env": (
        frozenset({"--export-token-file", "--no-check"}),
        frozenset({*DAEMON_OPTIONS, "--shell", "--ttl"}),
        1,
    ),
}
"""The forms handled here; each mirrors its click command (admin.py, shell.py)."""


@dataclass(frozen=True, slots=True)
class Invocation:
    command: str
    arguments: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()
    values: dict[str, str] = field(default_factory=dict)


def parse(argv: Sequence[str]) -> Invocation | None:
    """``argv`` (without the program name) when it is a form handled here, else None.

    Mirrors click's reading of these commands: options before or after the argument,
    ``--name value`` or ``--name=value``. Declines what click would read otherwise or
    refuse: ``--``, short options, repeated options, a missing value, help."""
    if not argv or argv[0] not in COMMAND_OPTIONS or not all(arg.isprintable() for arg in argv):
        return None  # control characters: click strips escape sequences from what it echoes
    command, rest = argv[0], list(argv[1:])
    flags_allowed, valued, positional = COMMAND_OPTIONS[command]
    flags: set[str] = set()
    values: dict[str, str] = {}
    arguments: list[str] = []
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-") or arg == "-":
            arguments.append(arg)
            continue
        name, equals, value = arg.partition("=")
        if name in flags or name in values:
            return None
        if name in flags_allowed and not equals:
            flags.add(name)
        elif name in valued and equals:
            values[name] = value
        elif name in valued and rest and not rest[0].startswith("-"):
            values[name] = rest.pop(0)
        else:
            return None
        if values.get(name) == "":
            return None  # click reads an empty value its own way (an empty path, a bad port)
    if len(arguments) != positional:
        return None
    return Invocation(command, tuple(arguments), frozenset(flags), values)


def run(argv: Sequence[str]) -> int | None:
    """The exit status of a command handled here, or None: let click handle ``argv``."""
    invocation = parse(argv)
    if invocation is None:
        return None
    from rolebroker.cli import daemonsettings
    from rolebroker.config import SettingsError

    port_text = invocation.values.get("--port")
    if port_text is not None and not (port_text.isascii() and port_text.isdigit()):
        return None
    token_file = invocation.values.get("--token-file")
    try:
        settings = daemonsettings.resolve(
            int(port_text) if port_text is not None else None, Path(token_file) if token_file else None
        )
    except SettingsError:
        return None  # click says it with the usage line
    handler = _HANDLERS[invocation.command]
    return handler(invocation, settings)


def _token(invocation: Invocation, settings: Settings) -> int:
    from rolebroker.cli.client import ClientError, DaemonClient

    try:
        token = DaemonClient(settings).token()
    except ClientError as exc:
        return _fail(str(exc))
    _out(token + ("\n" if sys.stdout.isatty() else ""))
    return 0


def _status(invocation: Invocation, settings: Settings) -> int:
    import json
    import time

    from rolebroker.cli.client import ClientError, DaemonClient
    from rolebroker.cli.statusformat import format_status

    try:
        status = DaemonClient(settings).status()
    except ClientError as exc:
        return _fail(str(exc))
    if "--json" in invocation.flags:
        _out(json.dumps(status.to_json(), indent=2, sort_keys=True) + "\n")
    else:
        _out(format_status(status, time.time()))
    return 0


def _env(invocation: Invocation, settings: Settings) -> int | None:
    from rolebroker.cli import shellenv
    from rolebroker.cli.clientenv import CommandFailed, EnvRequest, env_script
    from rolebroker.grantcode import parse_duration

    shell = invocation.values.get("--shell")
    if shell is not None and shell not in shellenv.SHELLS:
        return None
    ttl_text = invocation.values.get("--ttl")
    try:
        ttl = parse_duration(ttl_text) if ttl_text is not None else None
    except ValueError:
        return None
    token_file = invocation.values.get("--token-file")
    request = EnvRequest(
        profile=invocation.arguments[0],
        shell=shell,
        ttl=ttl,
        export_token_file="--export-token-file" in invocation.flags,
        check="--no-check" not in invocation.flags,
        token_file=Path(token_file) if token_file else None,
    )
    try:
        script = env_script(settings, request, warn=_err)
    except CommandFailed as exc:
        return _fail(str(exc))
    _out(script)
    return 0


_HANDLERS: dict[str, Callable[[Invocation, Settings], int | None]] = {
    "token": _token,
    "status": _status,
    "env": _env,
}


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _fail(message: str) -> int:
    """As click shows a ClickException: ``Error: message`` on stderr, status 1."""
    _err(f"Error: {message}")
    return 1


def main() -> None:
    """The console script: a handled form, else the click group."""
    try:
        status = run(sys.argv[1:])
    except KeyboardInterrupt:
        _err("Aborted!")
        sys.exit(1)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(1)
    if status is not None:
        sys.exit(status)
    from rolebroker.cli.main import cli

    cli()


def _quiet_stdout() -> None:
    """After EPIPE, as click does: no second error when Python flushes stdout at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
