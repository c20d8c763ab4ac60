"""The profiles worth warming at start: the ones used within ``keep_warm`` before a stop.

After a login or a restart the first tool would otherwise wait on a whole STS chain. The
daemon remembers which profiles were used and when (names and times only, never a
credential) in ``$XDG_STATE_HOME/rolebroker/warm.json``, and the refresher fetches them
at start before any client asks. The file is written off the event loop, only when the
set changed, at most every ``interval`` seconds and once at stop; a bad file is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

log = logging.getLogger("rolebroker")

MAX_PROFILES = 256
"""More names than anyone uses in a day; the newest are kept."""
MAX_BYTES = 64 * 1024
"""A larger file is not ours (or is corrupt): it is ignored, not parsed."""
SAVE_INTERVAL = 5.0
TIME_RESOLUTION = 60.0
"""A newer use of an already saved profile is worth a write only once this much later."""
FORMAT_VERSION = 1

Snapshot = Mapping[str, float]


def default_path(environ: Mapping[str, str]) -> Path:
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rolebroker" / "warm.json"


class WarmFile:
    """Reads and writes the file. Blocking: call from a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, *, now: float, keep_warm: float, known: Collection[str] | None = None) -> dict[str, float]:
        """Profiles used within ``keep_warm`` (and still in ``known``, when given), newest first."""
        try:
            if self.path.stat().st_size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            document = json.loads(self.path.read_text(encoding="utf-8"))
            entries = document["profiles"] if isinstance(document, dict) else None
            if document.get("version") != FORMAT_VERSION or not isinstance(entries, dict):
                raise ValueError("not a rolebroker warm-set file")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            log.warning("ignoring the warm-profile file %s: %s", self.path, _reason(exc))
            return {}
        used = {
            name: float(when)
            for name, when in entries.items()
            if isinstance(name, str) and isinstance(when, int | float) and now - when <= keep_warm
        }
        dropped = sorted(set(used) - set(known)) if known is not None else []
        for name in dropped:
            del used[name]
        if dropped:
            log.info("warm-profile file: dropped %s (no longer AWS profiles)", ", ".join(dropped))
        return _newest(used)

    def save(self, used: Snapshot) -> None:
        """Atomically, 0600, in a 0700 directory; only names and last-use times."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "version": FORMAT_VERSION,
            "profiles": {name: int(when) for name, when in _newest(used).items()},
        }
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
            os.replace(partial, self.path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


class WarmSet:
    """Keeps the file in step with the broker's last-use table, without I/O on the loop."""

    def __init__(
        self,
        file: WarmFile,
        snapshot: Callable[[], Snapshot],
        *,
        interval: float = SAVE_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.file = file
        self._snapshot = snapshot
        self._interval = interval
        self._clock = clock
        self._saved: dict[str, float] | None = None
        self._dirty: asyncio.Event | None = None

    async def restore(self, *, keep_warm: float, known: Collection[str] | None) -> dict[str, float]:
        """The saved profiles still worth warming (read in a thread)."""
        used = await asyncio.to_thread(self.file.load, now=self._clock(), keep_warm=keep_warm, known=known)
        self._saved = dict(used)
        if used:
            log.info("warming %d profile(s) used before the last stop: %s", len(used), ", ".join(used))
        return used

    def changed(self, current: Snapshot) -> bool:
        saved = self._saved
        if saved is None:
            return bool(current)
        if current.keys() != saved.keys():
            return True
        return any(when - saved[name] >= TIME_RESOLUTION for name, when in current.items())

    async def flush(self) -> None:
        current = dict(self._snapshot())
        if not self.changed(current):
            return
        try:
            await asyncio.to_thread(self.file.save, current)
        except OSError as exc:
            log.warning("cannot write the warm-profile file %s: %s", self.file.path, exc.strerror or exc)
            return
        self._saved = current

    def touch(self) -> None:
        """A profile was used: the file may need a write (at most every ``interval``)."""
        if self._dirty is not None:
            self._dirty.set()

    async def run(self) -> None:
        """Sleeps until a use, then writes ``interval`` later: an idle daemon never wakes here."""
        self._dirty = asyncio.Event()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._interval)
            self._dirty.clear()
            try:
                await self.flush()
            except Exception:  # never let a bug here stop serving
                log.exception("saving the warm-profile file failed")


def _newest(used: Snapshot) -> dict[str, float]:
    ranked = sorted(used.items(), key=lambda item: item[1], reverse=True)[:MAX_PROFILES]
    return dict(ranked)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    if isinstance(exc, KeyError):
        return f"no {exc} entry"
    return str(exc) or type(exc).__name__
