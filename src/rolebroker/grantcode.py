"""The grant string and the --ttl syntax, shared by the daemon's GrantStore and the CLI.

A grant string is ``rbg1.<id>.<mac>``: ``id`` is 128 random bits, ``mac`` is
HMAC-SHA256(master token, label + id), both URL-safe base64 without padding (71 ASCII
characters, no whitespace: every SDK sends it unchanged as ``Authorization``). Whoever holds
the master token can recompute a grant from its id: the daemon to verify one, the CLI to
hand a shell the grant it already made. Light on purpose: ``env`` runs on every shell start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

PREFIX = "rbg1"
MAC_LABEL = b"rolebroker grant v1\x00"
"""Domain separation: a grant mac is never a listener proof or any other use of the token."""
ID_BYTES = 16
ID_CHARS = 22  # base64url of 16 bytes, unpadded
MAC_CHARS = 43  # base64url of 32 bytes, unpadded
GRANT_CHARS = len(PREFIX) + 1 + ID_CHARS + 1 + MAC_CHARS
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

DEFAULT_EXEC_TTL = 12 * 3600.0
"""Seconds a grant made for ``rolebroker exec`` lives unless told otherwise."""
MAX_TTL = 366 * 86400.0
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` or combinations (``1h30m``) -> seconds."""
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 30m, 2h, 1d or 1h30m")
    seconds = float(sum(int(n) * _UNITS[u] for n, u in parts))
    if not 0 < seconds <= MAX_TTL:
        raise ValueError(f"{text!r}: a duration must be more than 0 and at most 366 days")
    return seconds


def mac_for(master: str, grant_id: str) -> str:
    digest = hmac.new(master.encode(), MAC_LABEL + grant_id.encode("ascii"), hashlib.sha256).digest()
    return b64(digest)


def grant_string(master: str, grant_id: str) -> str:
    return f"{PREFIX}.{grant_id}.{mac_for(master, grant_id)}"


def looks_like_grant(header: str | None) -> bool:
    """Cheap test so the server can tell a grant from a master token before verifying."""
    return header is not None and header.startswith(PREFIX + ".")


def split_grant(header: str | None) -> tuple[str, str] | None:
    """(id, mac) of a well-formed grant string, else None; nothing is verified here."""
    if header is None or len(header) != GRANT_CHARS:
        return None
    prefix, _, rest = header.partition(".")
    grant_id, _, mac = rest.partition(".")
    if prefix != PREFIX or len(grant_id) != ID_CHARS or len(mac) != MAC_CHARS:
        return None
    if not (valid_grant_id(grant_id) and _B64URL.fullmatch(mac)):
        return None
    return grant_id, mac


def valid_grant_id(grant_id: str) -> bool:
    return len(grant_id) == ID_CHARS and _B64URL.fullmatch(grant_id) is not None


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
