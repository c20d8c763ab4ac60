"""Which daemon a command talks to: the settings as ``serve`` reads them (flags over env
over config.toml), except that the port of the running daemon's discovery file wins over
the default when nothing names a port.

No click here: the hot commands (``token``, ``env``, ``status``) resolve their daemon
without loading the command-line framework (see quick.py)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from rolebroker import discovery
from rolebroker.config import Settings, load_settings


def resolve(port: int | None, token_file: Path | None) -> Settings:
    """Raises SettingsError for a bad value (a usage error to the caller)."""
    settings = load_settings({"port": port, "token_file": token_file})
    if port is None and not os.environ.get("ROLEBROKER_PORT") and not _config_names_port(settings):
        found = discovery.read(discovery.discovery_file(os.environ))
        if found is not None:
            settings = replace(settings, port=found.port)
    return settings


def _config_names_port(settings: Settings) -> bool:
    if settings.config_file is None:
        return False
    import tomllib  # only when a config.toml exists

    try:
        with settings.config_file.open("rb") as handle:
            return "port" in tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return False
