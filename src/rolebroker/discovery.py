"""``daemon.json``: where the running daemon listens, so the CLI finds it without flags.

Written by the daemon once it listens (0600, next to the default token file in the user's
private runtime directory), removed on a clean stop. It holds the port, the listen
addresses, the token file's path, the audit file's path and the pid, never the token. The
CLI trusts it only when it is a regular file of its own user and the pid is alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebroker.config import default_token_file

_MAX_BYTES = 64 * 1024

INSIDE_DAEMON = "ROLEBROKER_DAEMON_PID"
"""Set by ``serve`` in its own environment, so every process the daemon starts (a profile's
``credential_process``) inherits it. ``credential-process`` refuses to run under it: a
profile the daemon serves whose source is rolebroker itself would wait on itself."""


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    port: int
    addresses: tuple[str, ...]
    token_file: Path
    pid: int
    audit_file: Path | None = None
    """Where this daemon writes its audit log (``rolebroker audit`` reads it); None from a
    daemon that does not say."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "port": self.port,
            "addresses": list(self.addresses),
            "token_file": str(self.token_file),
            "pid": self.pid,
        }
        if self.audit_file is not None:
            body["audit_file"] = str(self.audit_file)
        return body


def discovery_file(environ: Mapping[str, str]) -> Path:
    """``$XDG_RUNTIME_DIR/rolebroker/daemon.json``, else ``~/.local/state/rolebroker/daemon.json``."""
    return default_token_file(environ).parent / "daemon.json"


def write(path: Path, info: DaemonInfo) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    import secrets  # only the daemon writes the file

    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(info.to_json(), handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove(path: Path, pid: int) -> None:
    """Remove the file only if it still describes process ``pid`` (a newer daemon may have
    replaced it)."""
    found = read(path, require_alive=False)
    if found is not None and found.pid == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def read(path: Path, *, require_alive: bool = True) -> DaemonInfo | None:
    """The file's content, or None when it is missing, not ours, malformed or stale."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        raw = os.read(fd, _MAX_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        found = DaemonInfo(
            port=_int(data["port"], 1, 65535),
            addresses=tuple(str(a) for a in data["addresses"]),
            token_file=Path(str(data["token_file"])),
            pid=_int(data["pid"], 1, 2**31),
            audit_file=Path(data["audit_file"]) if isinstance(data.get("audit_file"), str) else None,
        )
    except (ValueError, KeyError, TypeError):
        return None
    if require_alive and not _alive(found.pid):
        return None
    return found


def _int(value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(value)
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
