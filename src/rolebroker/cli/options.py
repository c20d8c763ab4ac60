"""What every command that talks to the daemon shares: --port/--token-file, the settings
as ``serve`` reads them, and one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from rolebroker import discovery
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
