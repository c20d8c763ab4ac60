"""The shared secret clients send as ``Authorization``."""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path


class TokenFileError(OSError):
    pass


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
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token)
    return token


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
    return hmac.compare_digest(expected.encode(), presented.encode("latin-1", "replace"))
