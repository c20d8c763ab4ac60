"""The shared secret clients send as ``Authorization``, and the proof that a listener knows it.

The proof exists because any local user can bind a free loopback port: before the CLI sends
the token anywhere, the listener must show that it knows the token without the CLI revealing
it (a keyed hash of a fresh nonce and of the address the connection arrived on).

Every module beyond ``os`` and ``pathlib`` is imported where it is used: ``rolebroker token``
only reads the file, and a shell start should not pay for hashing it does not do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PROOF_LABEL = b"rolebroker listener proof v1\x00"
"""Domain separation: a proof can never be mistaken for any other use of the token."""
NONCE_BYTES = 32
NONCE_HEX_CHARS = 2 * NONCE_BYTES
PROOF_HEX_CHARS = 64
"""A hex HMAC-SHA256."""


class TokenFileError(OSError):
    pass


def new_token() -> str:
    """32 random bytes, url-safe base64: no newline or space a client could choke on."""
    import secrets

    return secrets.token_urlsafe(32)


def load_or_create_token(path: Path) -> str:
    """Reuse the token across restarts: exported env vars and running processes keep it.

    Written 0600 with no trailing newline: a newline crashes aws-sdk-js v2 and is
    rejected by botocore, Go and Rust.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_existing(path)
    token = new_token()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token)
    return token


def write_token(path: Path, token: str) -> None:
    """Replace the token file atomically (a reader sees the old or the new token, never a
    half-written one), 0600, no trailing newline."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    import secrets

    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _read_existing(path: Path) -> str:
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"{path} is not a regular file; remove it and restart rolebroker")
    if info.st_uid != os.getuid():
        raise TokenFileError(f"{path} belongs to another user; remove it and restart rolebroker")
    if info.st_mode & 0o077:
        os.chmod(path, 0o600)
    token = path.read_text(encoding="ascii").strip()
    if len(token) < 32 or any(c.isspace() for c in token):
        raise TokenFileError(f"{path} does not hold a valid token; remove it and restart rolebroker")
    if path.read_bytes() != token.encode():
        # Someone's editor added a newline: rewrite it, clients choke on it.
        path.write_text(token, encoding="ascii")
    return token


def read_token(path: Path) -> str:
    """For the CLI: read the daemon's token without creating one."""
    return path.read_text(encoding="ascii").strip()


def token_matches(expected: str, presented: str | None) -> bool:
    if presented is None:
        return False
    import hmac

    return hmac.compare_digest(expected.encode(), presented.encode("latin-1", "replace"))


class TokenStore:
    """The daemon's current token; ``rotate`` replaces it for every later request at once."""

    def __init__(self, token: str, path: Path) -> None:
        self._token = token
        self.path = path
        import hmac
        import threading

        self._rotating = threading.Lock()
        self._compare = hmac.compare_digest  # bound once: matches() runs on every request

    @property
    def current(self) -> str:
        return self._token

    def matches(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return self._compare(self._token.encode(), presented.encode("latin-1", "replace"))

    def rotate(self) -> None:
        """Write the new token first: if the file cannot be written, the old one stays valid
        (clients read the file, so memory and file must never disagree)."""
        with self._rotating:  # two rotations at once must leave file and memory agreeing
            token = new_token()
            write_token(self.path, token)
            self._token = token


# -- listener proof --------------------------------------------------------------------------


def canonical_address(host: str, port: int) -> bytes:
    """``host:port`` as both ends spell it: brackets and zone dropped, IPv4-mapped IPv6 as
    IPv4, IPv6 compressed (``::1``)."""
    import ipaddress

    name = host.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return f"{name.lower()}:{port}".encode()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"{ip}:{port}".encode()


def new_nonce() -> bytes:
    import secrets

    return secrets.token_bytes(NONCE_BYTES)


def parse_nonce(text: str | None) -> bytes | None:
    """The nonce of a proof request: exactly 64 lowercase hex digits, else None."""
    if text is None or len(text) != NONCE_HEX_CHARS or text.strip("0123456789abcdef"):
        return None
    return bytes.fromhex(text)


def listener_proof(token: str, nonce: bytes, host: str, port: int) -> str:
    """HMAC-SHA256(token, label + nonce + listener address), hex. Binding the listener's own
    address makes a relayed answer useless: a squatter on port A that forwards the nonce to
    the real daemon on port B gets a proof for B."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a proof nonce is {NONCE_BYTES} bytes")
    import hashlib
    import hmac

    message = PROOF_LABEL + nonce + canonical_address(host, port)
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def proof_is_valid(token: str, nonce: bytes, host: str, port: int, presented: object) -> bool:
    """Constant-time check of a listener's answer against the address the CLI connected to."""
    if not isinstance(presented, str) or len(presented) != PROOF_HEX_CHARS:
        return False
    import hmac

    expected = listener_proof(token, nonce, host, port)
    return hmac.compare_digest(expected.encode(), presented.encode("ascii", "replace"))
