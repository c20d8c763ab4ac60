"""The audit log: one JSON line per credential request, saying who asked for what.

``$XDG_STATE_HOME/rolebroker/audit.jsonl`` (0600, in a 0700 directory), rotated by size
(``audit.jsonl.1`` .. ``.3``), so it never takes more than (backups + 1) x max_bytes. Lines
are written by a background thread from a bounded queue: a request only enqueues (never
waits on the disk), and when the queue is full the record is dropped and counted; the next
line written says how many were lost.

Never a secret: records carry no token, grant string or key, and the free text that a caller
chooses (command line, user agent) is bounded and scrubbed of anything that looks like one
(the master token itself, whatever its form; url-safe and base64 runs such as grant macs and
generated tokens; AWS keys and ``token=``-style pairs). Lines are ASCII JSON
(``ensure_ascii``), so no control or bidi character reaches a terminal that prints the file.
Reading, filtering and formatting the file is auditlog.py's (the CLI's side, kept light).

A container-listener request has no process to name: the writer asks containerinfo.py which
container the Docker/Podman API lists at its source address (in this thread, never on the
request path) and records its name, image, short id and engine, scrubbed like caller text.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from rolebroker.auditlog import default_audit_file as default_audit_file
from rolebroker.auditlog import follow as follow
from rolebroker.auditlog import format_table as format_table
from rolebroker.auditlog import read_audit as read_audit
from rolebroker.auditlog import rotated
from rolebroker.containerinfo import UNKNOWN, ContainerInfo, Lookup, Unknown
from rolebroker.identity import CallerIdentity
from rolebroker.redact import redact

log = logging.getLogger(__name__)

MAX_BYTES = 5 << 20
BACKUPS = 3
QUEUE_SIZE = 1000
"""Records waiting for the writer; beyond this they are dropped (and counted)."""
_YIELD_EVERY = 8
"""Lines the writer formats between two releases of the GIL. Formatting a batch in one go
held it for milliseconds while the event loop waited: that was the warm path's p99."""
_FIELD = 256
_LONG_FIELD = 1024
_MAX_ARGS = 64
_REDACTED = "<redacted>"
_URLSAFE_RUN = re.compile(r"[A-Za-z0-9_-]{32,}")
"""Generated master tokens (43) and grant macs (43) are url-safe runs that redact.py, which
knows standard base64, misses when they contain ``-`` or ``_``."""
_GRANT_LIKE = re.compile(r"rbg1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
"""A grant string (grants.py), for text the url-safe rule would spoil: container names such
as ``project-long-service-name-1`` are url-safe runs too."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One credential request. ``outcome`` is ``OK`` or the error code the client got."""

    time: str
    profile: str
    outcome: str
    status: int
    role_arn: str | None = None
    grant: str | None = None
    uid: int | None = None
    pid: int | None = None
    exe: str | None = None
    cmdline: list[str] | None = None
    cwd: str | None = None
    user_agent: str | None = None
    source: str | None = None
    """The peer address of a request on the container listener (a container's address)."""
    container: ContainerInfo | Unknown | None = UNKNOWN
    """The container the engines list at ``source`` (written as ``container``), None when
    they list none there (written as null), UNKNOWN when there was no lookup (left out)."""


_FIELDS = tuple(field.name for field in dataclasses.fields(AuditRecord) if field.name != "container")


class _Pending(NamedTuple):
    """What a request hands the writer: raw values, finished in the writer thread."""

    at: float
    profile: str
    outcome: str
    status: int
    role_arn: str | None
    grant: str | None
    caller: CallerIdentity | None
    user_agent: str | None
    source: str | None


_MEMO = 256
"""Scrubbed callers and user agents kept by the writer (cleared when full: bounded)."""

LINGER = 0.05
"""Seconds the writer waits for more lines after the first of a batch."""


def _now_iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _bounded(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AuditLog:
    """Bounded, non-blocking, secret-free audit lines (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        secrets: Callable[[], Iterable[str]] = lambda: (),
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
        containers: Lookup | None = None,
    ) -> None:
        self.path = path
        self._containers = containers
        """Names the container behind a container-listener request (containerinfo.py): called
        here, in the writer thread, never on the request path."""
        self._secrets = secrets
        """Exact strings never to write (the master token): scrubbed from caller text."""
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock
        self._pending: collections.deque[_Pending | None] = collections.deque()
        """Lines from the request path. A deque, not a queue.Queue: appending takes no lock and
        wakes nobody, so a burst of requests does not hand the GIL to the writer per line."""
        self._capacity = queue_size
        self._wake = threading.Event()
        """Set by the first line after the writer went to sleep; the writer clears it."""
        self._processes: dict[CallerIdentity, tuple[str | None, list[str] | None, str | None]] = {}
        self._agents: dict[str, str] = {}
        self._tails: dict[tuple[object, ...], bytes] = {}
        self._second: int | None = None
        self._second_text = ""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        """Records lost because the queue was full (since start)."""
        self.write_errors = 0
        self._unreported = 0

    # -- request path ------------------------------------------------------------------------

    def record(
        self,
        *,
        profile: str,
        outcome: str,
        status: int,
        role_arn: str | None = None,
        grant: str | None = None,
        caller: CallerIdentity | None = None,
        user_agent: str | None = None,
        source: str | None = None,
    ) -> bool:
        """Enqueue one line; never blocks. False when it was dropped (queue full).

        Only the raw values are queued: bounding, scrubbing and JSON happen in the writer
        thread, so a request pays microseconds, not the regexes."""
        pending = _Pending(
            self._clock(), profile, outcome, status, role_arn, grant, caller, user_agent, source
        )
        if len(self._pending) >= self._capacity:
            with self._lock:
                self.dropped += 1
                self._unreported += 1
            return False
        self._pending.append(pending)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def _format(self, raw: _Pending) -> bytes:
        """One JSON line. A client asks the same way request after request (same caller,
        profile, outcome): everything after the time is kept per such request, so a busy
        connection costs the writer a dict lookup and a time stamp per line."""
        container = self._container(raw.source, raw.at) if raw.source is not None else UNKNOWN
        key = (raw[1:], container)
        tail = self._tails.get(key)
        if tail is None:
            if len(self._tails) >= _MEMO:
                self._tails.clear()
            line = self._line(self._finish(raw, container))
            tail = self._tails[key] = line[line.index(b",") + 1 :]
        return b'{"time":"' + self._stamp(raw.at).encode("ascii") + b'",' + tail

    def _stamp(self, moment: float) -> str:
        """``_now_iso(moment)`` with the date and time of day kept for the current second."""
        second = math.floor(moment)
        micro = round((moment - second) * 1_000_000)  # as datetime rounds it
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._second_text = _now_iso(second)[:-5]  # without ".mmmZ"
        return f"{self._second_text}.{micro // 1000:03d}Z"

    def _finish(self, raw: _Pending, container: ContainerInfo | Unknown | None = UNKNOWN) -> AuditRecord:
        """The line's fields, bounded and scrubbed (writer thread). A connection's caller and
        a client's user agent repeat request after request: their scrubbed forms are kept."""
        who = raw.caller or CallerIdentity()
        process = self._processes.get(who)
        if process is None:
            if len(self._processes) >= _MEMO:
                self._processes.clear()
            process = self._processes[who] = (
                _bounded(who.exe, _LONG_FIELD),
                self._scrub_args(who.cmdline),
                _bounded(who.cwd, _LONG_FIELD),
            )
        agent = None
        if raw.user_agent is not None:
            agent = self._agents.get(raw.user_agent)
            if agent is None:
                if len(self._agents) >= _MEMO:
                    self._agents.clear()
                agent = self._agents[raw.user_agent] = self._scrub(raw.user_agent, _FIELD) or ""
        exe, cmdline, cwd = process
        return AuditRecord(
            time=_now_iso(raw.at),
            profile=_bounded(raw.profile, _FIELD) or "",
            outcome=_bounded(raw.outcome, 64) or "",
            status=raw.status,
            role_arn=_bounded(raw.role_arn, _LONG_FIELD),
            grant=_bounded(raw.grant, 64),
            uid=who.uid,
            pid=who.pid,
            exe=exe,
            cmdline=list(cmdline) if cmdline is not None else None,
            cwd=cwd,
            user_agent=agent,
            source=_bounded(raw.source, 64),
            container=container,
        )

    def _container(self, source: str, at: float) -> ContainerInfo | Unknown | None:
        """The container at ``source``, its free text scrubbed. Nothing a lookup does may end
        the writer: an exception is one log line and a line without a container."""
        if self._containers is None:
            return UNKNOWN
        try:
            found = self._containers(source, at)
        except Exception as exc:
            log.warning("audit: the container lookup failed (%s); this line names none", type(exc).__name__)
            return UNKNOWN
        if not isinstance(found, ContainerInfo):
            return found
        return dataclasses.replace(
            found, name=self._scrub_label(found.name), image=self._scrub_label(found.image)
        )

    def _scrub_label(self, text: str) -> str:
        """A container's name or image: chosen by whoever started it, so scrubbed like caller
        text, but without the url-safe run rule (compose names are long url-safe runs)."""
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, _REDACTED)
        return redact(_GRANT_LIKE.sub(_REDACTED, text), limit=_FIELD)

    def _scrub(self, text: str | None, limit: int) -> str | None:
        if text is None:
            return None
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, _REDACTED)
        text = _URLSAFE_RUN.sub(_REDACTED, text)
        return redact(text, limit=limit)

    def _scrub_args(self, argv: tuple[str, ...] | None) -> list[str] | None:
        if argv is None:
            return None
        kept = [self._scrub(a, _FIELD) or "" for a in argv[:_MAX_ARGS]]
        if len(argv) > _MAX_ARGS:
            kept.append(f"... {len(argv) - _MAX_ARGS} more")
        total, out = 0, []
        for arg in kept:
            total += len(arg)
            if total > _LONG_FIELD:
                out.append("...")
                break
            out.append(arg)
        return out

    # -- writer ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rolebroker-audit", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer (at shutdown)."""
        if self._thread is None:
            return
        self._pending.append(None)
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait()  # idle: never woken
            # Let a burst gather: one write per batch instead of per line (a line is written
            # at most LINGER seconds after its request), and no wake-up per line meanwhile.
            if self._pending and self._pending[-1] is not None:
                time.sleep(LINGER)
            self._wake.clear()  # before draining: a line appended from now on sets it again
            batch: list[_Pending | None] = []
            with contextlib.suppress(IndexError):
                while True:
                    batch.append(self._pending.popleft())
            stop = None in batch
            lines: list[bytes] = []
            for done, raw in enumerate(batch, 1):
                if raw is not None:
                    lines.append(self._format(raw))
                if done % _YIELD_EVERY == 0:
                    time.sleep(0)  # hand the GIL to the event loop: requests wait microseconds, not ms
            with self._lock:
                lost, self._unreported = self._unreported, 0
            if lost:
                lines.insert(0, self._dropped_line(lost))
            if lines:
                self._write(lines)
            if stop:
                return

    def _line(self, entry: AuditRecord) -> bytes:
        # Not dataclasses.asdict: it deep-copies every field, and this runs once per request.
        fields: dict[str, object] = {
            name: value for name in _FIELDS if (value := getattr(entry, name)) is not None
        }
        if entry.container is not UNKNOWN:
            fields["container"] = entry.container.to_json() if entry.container is not None else None
        return (json.dumps(fields, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")

    def _dropped_line(self, count: int) -> bytes:
        line = {"time": _now_iso(self._clock()), "event": "dropped", "count": count}
        return (json.dumps(line, separators=(",", ":")) + "\n").encode("ascii")

    def _write(self, lines: list[bytes]) -> None:
        """A busy daemon queues many lines at once: they go out in as few writes as the
        rotation size allows (one open and one write per file part)."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            chunk: list[bytes] = []
            room = self._max_bytes - self._size()
            for line in lines:
                if len(line) > room and (chunk or room < self._max_bytes):
                    self._append(b"".join(chunk))
                    chunk = []
                    self._rotate_if_needed(len(line))
                    room = self._max_bytes - self._size()
                chunk.append(line)
                room -= len(line)
            if chunk:
                self._append(b"".join(chunk))
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 1000 == 0:
                log.warning("cannot write the audit log %s: %s", self.path, exc.strerror or exc)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _append(self, data: bytes) -> None:
        if not data:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self._max_bytes:
            return
        if self._backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for n in range(self._backups - 1, 0, -1):
            older = rotated(self.path, n)
            if older.exists():
                os.replace(older, rotated(self.path, n + 1))
        os.replace(self.path, rotated(self.path, 1))
