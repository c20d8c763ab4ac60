"""Reading the audit log: what ``rolebroker audit`` shows.

The daemon writes the file (audit.py); this module only reads it, across the rotated files
(``audit.jsonl.3`` .. ``.1`` then ``audit.jsonl``), filters it and formats it. Light on
purpose (json, datetime): the CLI imports it, and must not pay for the daemon's imports.
Every record is text callers chose (a command line, a profile name), so every cell is
escaped before it reaches a terminal, and JSON output is ASCII.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rolebroker.config import default_state_dir
from rolebroker.textsafe import escape

_EXE_WIDTH = 24
_COMMAND_WIDTH = 72
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def default_audit_file(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/rolebroker/audit.jsonl`` (else ``~/.local/state/...``)."""
    return default_state_dir(environ) / "audit.jsonl"


def rotated(path: Path, n: int) -> Path:
    """The ``n``-th older file: ``audit.jsonl.1`` is the newest rotated one."""
    return path.with_name(f"{path.name}.{n}")


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90s``, ``15m``, ``1h``, ``2d``, ``1w``) or a
    moment (``2026-11-29``, ``2026-11-29T20:00``, local time unless it ends in ``Z`` or an
    offset). The epoch seconds it means; ValueError with a usable message otherwise."""
    moment = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        return moment - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 1h, 2d, 1w) nor a time (2026-11-29T20:00, "
            "local unless it ends in Z)"
        ) from None
    return parsed.timestamp()  # naive: local time, as `journalctl --since` reads it


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records to show. ``None`` fields match everything."""

    profile: str | None = None
    since: float | None = None
    grant: str | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        if "event" in record:  # a 'dropped' marker: shown unless a profile or grant is asked for
            if self.profile is not None or self.grant is not None:
                return False
            return self.since is None or (_parse_time(record.get("time")) or 0) >= self.since
        if self.profile is not None and record.get("profile") != self.profile:
            return False
        if self.grant is not None and record.get("grant") != self.grant:
            return False
        if self.since is not None:
            moment = _parse_time(record.get("time"))
            if moment is None or moment < self.since:
                return False
        return True


def _files_oldest_first(path: Path) -> list[Path]:
    older = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.name[len(path.name) + 1 :].isdigit()),
        key=lambda p: int(p.name[len(path.name) + 1 :]),
        reverse=True,
    )
    return [*older, path]


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, layout).replace(tzinfo=UTC).timestamp()
    return None


def _parse_line(line: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict):
            return record
    return None


def read_audit(
    path: Path,
    profile: str | None = None,
    since: float | None = None,
    *,
    grant: str | None = None,
    last: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Every matching record across the rotated files, oldest first (only the ``last`` newest
    when given); unreadable lines are skipped, a missing file is no record."""
    wanted = AuditFilter(profile, since, grant)
    records = _read_all(path, wanted)
    if last is None:
        yield from records
    else:
        yield from collections.deque(records, maxlen=last)


def _read_all(path: Path, wanted: AuditFilter) -> Iterator[dict[str, Any]]:
    for file in _files_oldest_first(path):
        try:
            handle = file.open("rb")
        except OSError:
            continue
        with handle:
            for line in handle:
                record = _parse_line(line)
                if record is not None and wanted.matches(record):
                    yield record


def follow(
    path: Path,
    profile: str | None = None,
    since: float | None = None,
    *,
    grant: str | None = None,
    last: int | None = None,
    interval: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[dict[str, Any]]:
    """``tail -f``: the records so far, then new ones as they are written, across rotations
    (a new file at ``path`` is read from its start). Ends when ``stop()`` is true."""
    wanted = AuditFilter(profile, since, grant)
    yield from read_audit(path, profile, since, grant=grant, last=last)
    handle = None
    inode = None
    with contextlib.suppress(OSError):
        handle = path.open("rb")
        handle.seek(0, os.SEEK_END)
        inode = os.fstat(handle.fileno()).st_ino
    try:
        pending = b""
        while not stop():
            if handle is not None:
                chunk = handle.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        record = _parse_line(line)
                        if record is not None and wanted.matches(record):
                            yield record
                    continue
            try:
                current = path.stat().st_ino
            except OSError:
                current = None
            if current is not None and current != inode:  # rotated (or created): read the new file
                if handle is not None:
                    handle.close()
                handle, inode, pending = path.open("rb"), current, b""
                continue
            sleep(interval)
    finally:
        if handle is not None:
            handle.close()


# -- output ----------------------------------------------------------------------------------

_HEADER = (
    f"{'TIME':<20}  {'PROFILE':<16} {'OUTCOME':<16} {'GRANT':<20} {'UID':>6} {'PID':>7}  "
    f"{'EXE':<{_EXE_WIDTH}}  COMMAND"
)


def format_table(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Lines for ``rolebroker audit``: the header, then one line per record as it comes
    (so ``--follow`` can stream). Every cell is escaped: the file's text came from callers."""
    yield _HEADER
    for record in records:
        yield format_row(record)


def format_row(record: Mapping[str, Any]) -> str:
    when = _short_time(record.get("time"))
    if "event" in record:
        count = _cell(record.get("count"), 12).strip()
        return f"{when}  ({count} records dropped: the daemon's audit queue was full)"
    argv = record.get("cmdline")
    command = shlex.join(str(a) for a in argv) if isinstance(argv, list) and argv else "-"
    program = _tail(record.get("exe"), _EXE_WIDTH)
    if record.get("source") is not None:
        program, command = _container_cells(record)
    return (
        f"{when}  {_cell(record.get('profile'), 16)} {_cell(record.get('outcome'), 16)} "
        f"{_cell(record.get('grant'), 20)} {_cell(record.get('uid'), 6, right=True)} "
        f"{_cell(record.get('pid'), 7, right=True)}  {program}  "
        f"{_head(command, _COMMAND_WIDTH)}"
    ).rstrip()


def _container_cells(record: Mapping[str, Any]) -> tuple[str, str]:
    """A container-listener request has no process: the program column shows the container's
    name (as its engine lists it at the source address; informative, not proof: addresses
    can be spoofed), else the address; the command column says which."""
    source = str(record.get("source"))
    found = record.get("container")
    if isinstance(found, dict) and found.get("name"):
        name = str(found["name"])
        detail = ", ".join(
            str(part) for part in (found.get("image"), found.get("engine"), found.get("id")) if part
        )
        return _cell(name, _EXE_WIDTH), f"container {name} at {source}" + (f": {detail}" if detail else "")
    if "container" in record:  # null: the engines listed no container at that address
        return _cell(source, _EXE_WIDTH), f"container request from {source}: no running container there"
    return _cell(source, _EXE_WIDTH), f"container request from {source}"


def json_line(record: Mapping[str, Any]) -> str:
    """One record as a JSON line, ASCII only (escapes whatever a caller put in it)."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def _short_time(value: object) -> str:
    """``2026-11-29T20:30:01.12Z`` -> ``2026-11-29T20:30:01Z`` (UTC, as the file says)."""
    moment = _parse_time(value)
    if moment is None:
        return _cell(value, 20)
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(value: object, width: int, *, right: bool = False) -> str:
    text = escape("-" if value is None else str(value))
    if len(text) > width:
        text = text[: width - 1] + "~"
    return text.rjust(width) if right else text.ljust(width)


def _head(value: str, width: int) -> str:
    """The start of a command line: the program and its first arguments say the most."""
    text = escape(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _tail(value: object, width: int) -> str:
    """The end of a path: ``.../bin/python3.11`` names the program, the prefix rarely does."""
    text = escape("-" if value is None else str(value))
    if len(text) > width:
        text = "..." + text[len(text) - width + 3 :]
    return text.ljust(width)
