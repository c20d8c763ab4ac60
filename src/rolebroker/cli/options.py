"""What every command that talks to the daemon shares: --port/--token-file, the settings
as ``serve`` reads them, and one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from rolebroker.cli import daemonsettings
from rolebroker.cli.client import ClientError
from rolebroker.config import DEFAULT_PORT, Settings, SettingsError, load_settings

F = TypeVar("F", bound=Callable[..., Any])


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
    """The settings of a command that talks to the daemon (daemonsettings.py); a bad value
    is a usage error, not a traceback."""
    try:
        return daemonsettings.resolve(port, token_file)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@contextlib.contextmanager
def reported(error: type[click.ClickException] = click.ClickException) -> Iterator[None]:
    """A ClientError becomes a one-line error and a non-zero exit, never a traceback."""
    try:
        yield
    except ClientError as exc:
        raise error(str(exc)) from None
