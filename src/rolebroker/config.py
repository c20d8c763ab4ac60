"""rolebroker's own settings: built once at start-up (and on reload) and passed down.

Precedence: command-line flags, then ``ROLEBROKER_*`` environment variables, then
``$XDG_CONFIG_HOME/rolebroker/config.toml``, then defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 9911
DEFAULT_CONTAINER_PORT = 9912
CONTAINER_MODES = ("auto", "on", "off")


class SettingsError(ValueError):
    """A setting has a value the daemon cannot run with; the message names its source."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    refresh_before: float = 1200.0
    """Seconds before expiry at which credentials are renewed in the background."""
    keep_warm: float = 8 * 3600.0
    """Profiles requested within this many seconds are kept fresh by the refresher."""
    request_timeout: float = 5.0
    """How long a request for cold credentials waits on STS before answering 504."""
    token_file: Path = field(default_factory=lambda: default_token_file(os.environ))
    default_profile: str = "default"
    log_level: str = "info"
    same_user_without_token: bool = False
    """Serve credential requests without Authorization when the kernel says the caller is
    the daemon's own user (credential routes only; never admin routes)."""
    config_file: Path | None = None
    """The rolebroker config file that was read, if any (for reload and messages)."""
    container_port: int = DEFAULT_CONTAINER_PORT
    """The container listener's port on 169.254.170.2 (the set-up DNATs port 80 to it)."""
    containers: str = "auto"
    """The container listener: ``auto`` serves it when 169.254.170.2 exists at start,
    ``on`` always (bound with IP_FREEBIND: it works once the address appears), ``off`` never."""
    container_names: bool = True
    """Name the container behind a container-listener request in the audit log, by asking
    the Docker/Podman API socket the daemon's user can open (containerinfo.py)."""

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def default_token_file(environ: Mapping[str, str]) -> Path:
    """$XDG_RUNTIME_DIR is private to the user and tmpfs; fall back to the state dir."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "rolebroker" / "token"
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rolebroker" / "token"


def default_config_file(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rolebroker" / "config.toml"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    import ipaddress  # the CLI reads settings on every shell start: only when a host is given

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _to_port(value: Any) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(value)
    return port


def _to_container_port(value: Any) -> int:
    port = int(value)
    if not 1024 <= port <= 65535:
        raise ValueError(value)
    return port


def _to_container_mode(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = str(value).strip().lower()
    if mode not in CONTAINER_MODES:
        raise ValueError(value)
    return mode


def _to_bool(value: Any) -> bool:
    """TOML booleans, and the usual spellings in the environment."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _to_seconds(value: Any) -> float:
    seconds = float(value)
    if seconds < 0 or seconds != seconds:
        raise ValueError(value)
    return seconds


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "host": str,
    "port": _to_port,
    "refresh_before": _to_seconds,
    "keep_warm": _to_seconds,
    "request_timeout": _to_seconds,
    "token_file": lambda v: Path(os.path.expanduser(str(v))),
    "log_level": lambda v: str(v).lower(),
    "same_user_without_token": _to_bool,
    "container_port": _to_container_port,
    "containers": _to_container_mode,
    "container_names": _to_bool,
}
_ENV_NAMES = {name: f"ROLEBROKER_{name.upper()}" for name in _CONVERTERS}


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge flags (``overrides``, None values ignored), env and the config file."""
    env = os.environ if environ is None else environ
    config_path = Path(env["ROLEBROKER_CONFIG"]) if env.get("ROLEBROKER_CONFIG") else default_config_file(env)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    file_values = _read_config_file(config_path)
    for key, raw in file_values.items():
        values[key], sources[key] = raw, f"{key} in {config_path}"
    for key, env_name in _ENV_NAMES.items():
        if env.get(env_name):
            values[key], sources[key] = env[env_name], env_name
    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key], sources[key] = raw, f"--{key.replace('_', '-')}"

    converted: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            converted[key] = _CONVERTERS[key](raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{sources[key]}={raw!r} is not a valid {key.replace('_', ' ')}") from None

    settings = Settings(
        token_file=default_token_file(env),
        default_profile=env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default",
        config_file=config_path if file_values or config_path.exists() else None,
    )
    settings = replace(settings, **converted)
    if not is_loopback_host(settings.host):
        where = sources.get("host", "host")
        raise SettingsError(
            f"{where}={settings.host!r} is not a loopback address; rolebroker only listens on "
            "127.0.0.1, ::1 or localhost so that no other machine can ask for credentials"
        )
    return settings


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    import tomllib  # most machines have no config.toml: the CLI does not pay for the parser

    try:
        with handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    known = {f.name for f in fields(Settings)} & set(_CONVERTERS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return dict(data)


# -- reload ----------------------------------------------------------------------------

LIVE_SETTINGS = ("refresh_before", "keep_warm", "request_timeout", "log_level", "same_user_without_token")
RESTART_SETTINGS = ("host", "port", "token_file", "container_port", "containers", "container_names")


def apply_settings(current: Settings, baseline: Settings, fresh: Settings) -> tuple[Settings, list[str]]:
    """The settings after a re-read, and the names of changes that need a restart. A setting
    that differs from ``baseline`` came from a flag to ``serve``: the file cannot override it."""

    def changed(name: str) -> bool:
        ours = getattr(current, name)
        return bool(ours == getattr(baseline, name) and getattr(fresh, name) != ours)

    live = {name: getattr(fresh, name) for name in LIVE_SETTINGS if changed(name)}
    restart = [name for name in RESTART_SETTINGS if changed(name)]
    return replace(current, **live, config_file=fresh.config_file), restart


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/rolebroker`` (else ``~/.local/state/rolebroker``): files that must
    outlive a logout, such as the grants and the audit log."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rolebroker"


def settable_settings(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Every setting a user can set: (config.toml key, environment variable, default), for
    ``serve --help`` and ``rolebroker help settings``. Generated, so a new setting is listed."""
    defaults = Settings(token_file=default_token_file(environ))
    return [(key, env_name, str(getattr(defaults, key))) for key, env_name in _ENV_NAMES.items()]
