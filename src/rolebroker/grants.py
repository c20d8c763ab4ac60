"""Grants: credentials for the endpoint that cover only some profiles, for a while.

A grant string (grantcode.py) is ``rbg1.<id>.<mac>``, the mac an HMAC of the id under the
master token. The daemon recomputes the mac from the master token, so the grants file holds
no secret at all, only metadata (name, profiles, times, revoked flag), and anyone who can
read it learns nothing that opens the endpoint.

The master token is the root of trust: rotating it (``rolebroker token --rotate``) invalidates
every grant at once, since none of their macs verifies any more.

The daemon is the only writer of the grants file. ``create``, ``revoke``, ``revoke_all`` and
``flush`` write it (run them off the event loop); ``verify``, ``check_scope`` and ``touch``
only read and update memory, so the request path never waits on the disk.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rolebroker.config import default_state_dir
from rolebroker.errors import (
    GrantExpired,
    GrantLimitReached,
    GrantRevoked,
    GrantScope,
    InvalidGrantRequest,
    InvalidToken,
)
from rolebroker.grantcode import (
    ID_BYTES,
    MAX_TTL,
    b64,
    grant_string,
    mac_for,
    split_grant,
    valid_grant_id,
)

log = logging.getLogger(__name__)

MAX_GRANTS = 1000
"""Grants kept in the file; ``create`` refuses more (after pruning) rather than grow it."""
KEEP_DEAD = 86400.0
"""Expired or revoked grants stay this long (so a client hears 'expired', not 'invalid'),
then they are dropped from the file."""
MAX_PROFILES = 64
MAX_NAME = 64
MAX_PROFILE_NAME = 128
MAX_FILE_BYTES = 4 << 20
"""A grants file larger than this is not read (1,000 grants take about 300 KB)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]*")

_NEW_GRANT = 'get a new one: rolebroker grant PROFILE, or in a shell: eval "$(rolebroker env PROFILE)"'


@dataclass(frozen=True, slots=True)
class Grant:
    """What the daemon knows about one grant: never the grant string itself."""

    id: str
    name: str
    profiles: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def covers(self, profile: str) -> bool:
        return profile in self.profiles

    def dead_since(self) -> float | None:
        """When it stopped being usable (revocation or expiry), if it has."""
        times = [t for t in (self.revoked_at, self.expires_at) if t is not None]
        return min(times) if times else None

    def to_json(self, last_used: float | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "profiles": list(self.profiles),
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked": self.revoked,
            "revoked_at": _iso(self.revoked_at),
            "last_used": _iso(last_used),
        }


class GrantStore:
    """The daemon's grants: verified in memory, persisted as JSON without any secret."""

    def __init__(
        self,
        path: Path,
        master: Callable[[], str],
        *,
        clock: Callable[[], float] = time.time,
        max_grants: int = MAX_GRANTS,
    ) -> None:
        self.path = path
        self._master = master
        """Called on every verify: a rotated master token takes effect at once."""
        self._clock = clock
        self._max = max_grants
        self._grants: dict[str, Grant] = {}
        self._last_used: dict[str, float] = {}
        self._dirty = False
        self._lock = threading.Lock()
        self.problem: str | None = None
        """Why the grants file could not be read, for the log and /status; None when fine."""
        self._load()

    def now(self) -> float:
        """The store's clock (a grant's state depends on it)."""
        return self._clock()

    # -- request path: memory only --------------------------------------------------------

    def verify(self, header: str | None) -> Grant:
        """The grant this ``Authorization`` value is, or InvalidToken / GrantExpired /
        GrantRevoked. The mac is checked (constant time) before the id is looked up, so a
        caller without the master token cannot even learn whether an id exists."""
        parsed = split_grant(header)
        if parsed is None:
            raise InvalidToken(_invalid_message())
        grant_id, presented = parsed
        expected = mac_for(self._master(), grant_id)
        if not hmac.compare_digest(expected.encode(), presented.encode()):
            raise InvalidToken(_invalid_message())
        grant = self._grants.get(grant_id)
        if grant is None:
            raise InvalidToken(_invalid_message())
        if grant.revoked:
            raise GrantRevoked(f"grant {grant.name!r} was revoked; {_NEW_GRANT}")
        if grant.expired(self._clock()):
            raise GrantExpired(f"grant {grant.name!r} expired at {_iso(grant.expires_at)}; {_NEW_GRANT}")
        return grant

    def check_scope(self, grant: Grant, profile: str) -> None:
        if grant.covers(profile):
            return
        shown = profile if len(profile) <= MAX_PROFILE_NAME else profile[: MAX_PROFILE_NAME - 3] + "..."
        covered = ", ".join(grant.profiles)
        raise GrantScope(
            f"grant {grant.name!r} covers only {covered}, not {shown!r}; for {shown!r} run: "
            f'rolebroker grant {shown}, or in a shell: eval "$(rolebroker env {shown})"'
        )

    def touch(self, grant: Grant) -> None:
        """Remember the use; written by the next ``flush`` (never on the request path)."""
        self._last_used[grant.id] = self._clock()
        self._dirty = True

    # -- admin path: may write the file -----------------------------------------------------

    def create(
        self, profiles: Iterable[str], ttl: float | None = None, name: str | None = None
    ) -> tuple[Grant, str]:
        """A new grant and its string (shown once, never stored)."""
        wanted = tuple(dict.fromkeys(profiles))
        _check_profiles(wanted)
        if ttl is not None and not 0 < ttl <= MAX_TTL:
            raise InvalidGrantRequest("a grant's lifetime must be more than 0 s and at most 366 days")
        grant_id = b64(secrets.token_bytes(ID_BYTES))
        if name is None:
            name = f"{wanted[0][:40]}-{grant_id[:6]}"
            name = name if _NAME.fullmatch(name) else f"grant-{grant_id[:6]}"
        elif len(name) > MAX_NAME or not _NAME.fullmatch(name):
            raise InvalidGrantRequest(
                f"a grant name is 1 to {MAX_NAME} characters: letters, digits and . _ @ : + -, "
                "starting with a letter or digit"
            )
        now = self._clock()
        grant = Grant(grant_id, name, wanted, now, None if ttl is None else now + ttl)
        with self._lock:
            self._prune(now)
            if len(self._grants) >= self._max:
                raise GrantLimitReached(
                    f"{len(self._grants)} grants exist, the most rolebroker keeps; revoke some: "
                    "rolebroker grant --revoke NAME (or --revoke-all)"
                )
            self._grants[grant_id] = grant
        self.flush(force=True)
        return grant, grant_string(self._master(), grant_id)

    def revoke(self, name_or_id: str) -> list[Grant]:
        """Revoke every live grant with this name or id; returns them (empty: none matched)."""
        now = self._clock()
        with self._lock:
            hits = [
                replace(g, revoked_at=now)
                for g in self._grants.values()
                if name_or_id in (g.id, g.name) and not g.revoked
            ]
            for grant in hits:
                self._grants[grant.id] = grant
        if hits:
            self.flush(force=True)
        return hits

    def revoke_all(self) -> int:
        now = self._clock()
        with self._lock:
            live = [g for g in self._grants.values() if not g.revoked]
            for grant in live:
                self._grants[grant.id] = replace(grant, revoked_at=now)
        self.flush(force=True)
        return len(live)

    def list(self) -> list[tuple[Grant, float | None]]:
        """Every grant kept, with its last use, oldest first."""
        with self._lock:  # create/revoke may run on another thread
            grants = sorted(self._grants.values(), key=lambda g: g.created_at)
            return [(g, self._last_used.get(g.id)) for g in grants]

    def flush(self, *, force: bool = False) -> None:
        """Write the file if anything changed (blocking: call it from a thread or the
        refresher's periodic task, and at shutdown)."""
        if not (self._dirty or force):
            return
        with self._lock:
            self._dirty = False
            self._prune(self._clock())
            payload = {
                "version": 1,
                "grants": [g.to_json(self._last_used.get(g.id)) for g in self._grants.values()],
            }
        try:
            _write_atomically(self.path, json.dumps(payload, indent=1).encode())
        except OSError as exc:
            self._dirty = True
            log.warning("cannot write %s: %s; grants stay in memory", self.path, exc.strerror or exc)

    # -- internals ----------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        """Drop grants dead for more than a day: the file stays bounded by live grants."""
        for grant in list(self._grants.values()):
            dead = grant.dead_since()
            if dead is not None and now - dead > KEEP_DEAD:
                del self._grants[grant.id]
                self._last_used.pop(grant.id, None)

    def _load(self) -> None:
        try:
            raw = _read_private(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._report(f"cannot read {self.path}: {exc.strerror or exc}")
            return
        try:
            data = json.loads(raw)
            records = data["grants"] if isinstance(data, dict) else None
            if not isinstance(records, list):
                raise ValueError("no 'grants' list")
        except (ValueError, KeyError) as exc:
            kept = self._set_aside()
            self._report(f"{self.path} is not a grants file ({exc}); starting without grants{kept}")
            return
        skipped = 0
        for record in records[: self._max]:
            try:
                grant, last_used = _from_json(record)
            except (TypeError, ValueError, KeyError):
                skipped += 1
                continue
            self._grants[grant.id] = grant
            if last_used is not None:
                self._last_used[grant.id] = last_used
        skipped += max(0, len(records) - self._max)
        if skipped:
            self._report(f"{self.path}: {skipped} unreadable or excess grant(s) skipped")

    def _set_aside(self) -> str:
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
        except OSError:
            return ""
        return f" (the file was moved to {aside})"

    def _report(self, problem: str) -> None:
        self.problem = problem
        log.warning("%s", problem)


# -- helpers ---------------------------------------------------------------------------------


def _invalid_message() -> str:
    return "this grant is not valid (the token was rotated, or it was never issued here); " + _NEW_GRANT


def _check_profiles(profiles: tuple[str, ...]) -> None:
    if not profiles:
        raise InvalidGrantRequest("a grant needs at least one profile: rolebroker grant PROFILE")
    if len(profiles) > MAX_PROFILES:
        raise InvalidGrantRequest(f"a grant covers at most {MAX_PROFILES} profiles")
    for profile in profiles:
        if (
            not profile
            or len(profile) > MAX_PROFILE_NAME
            or not profile.isprintable()
            or profile != profile.strip()
        ):
            raise InvalidGrantRequest(
                f"profile names in a grant are 1 to {MAX_PROFILE_NAME} printable characters"
            )


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: object) -> float | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError("time is not a string")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _from_json(record: Mapping[str, Any]) -> tuple[Grant, float | None]:
    grant_id = record["id"]
    name = record["name"]
    profiles = tuple(record["profiles"])
    if not (isinstance(grant_id, str) and valid_grant_id(grant_id)):
        raise ValueError("bad id")
    if not (isinstance(name, str) and _NAME.fullmatch(name) and len(name) <= MAX_NAME):
        raise ValueError("bad name")
    if not all(isinstance(p, str) for p in profiles):
        raise ValueError("bad profiles")
    _check_profiles(profiles)
    created = _parse_iso(record["created_at"])
    if created is None:
        raise ValueError("no creation time")
    revoked_at = _parse_iso(record.get("revoked_at"))
    if record.get("revoked") and revoked_at is None:
        revoked_at = created
    grant = Grant(grant_id, name, profiles, created, _parse_iso(record.get("expires_at")), revoked_at)
    return grant, _parse_iso(record.get("last_used"))


def _read_private(path: Path) -> bytes:
    """Our own regular file, not through a symlink, and not absurdly large."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_uid != os.getuid():
            raise OSError(f"{path} belongs to another user")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
        return handle.read(MAX_FILE_BYTES + 1)


def _write_atomically(path: Path, data: bytes) -> None:
    """A reader (or a crash) sees the old file or the new one, never half of one; 0600 in a
    0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def default_grants_file(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/rolebroker/grants.json``: it must outlive logouts, unlike the token's
    runtime directory, and it holds no secret."""
    return default_state_dir(environ) / "grants.json"
