"""The grants the CLI hands to clients instead of the master token (``env``, ``exec``,
``docker run``), and the private file ``env --export-token-file`` keeps one in.

The daemon keeps no grant string: it recomputes each from the master token and the grant's
id, and so can the CLI, which reads the token file. ``env`` uses that to hand every shell of
a profile the same untimed grant instead of piling up a new one per shell. No click here:
``env`` runs on every shell start (see quick.py).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rolebroker.cli.client import DaemonClient, DaemonError
from rolebroker.errors import BadReply
from rolebroker.grantcode import grant_string

GRANT_FILE_DIR = ("rolebroker", "grants")


def client_grant(client: DaemonClient, kind: str, profile: str, ttl: float | None) -> tuple[str, str]:
    """(name, grant string) of a grant for ``profile`` alone, made for ``kind`` (``env`` or
    ``exec``). ``env`` without a TTL reuses its live untimed grant for that profile."""
    if kind == "env" and ttl is None:
        for row in client.grants():
            if (
                row.get("state") == "active"
                and row.get("profiles") == [profile]
                and row.get("expires_at") is None
                and str(row.get("name", "")).startswith(f"env-{_label(profile)}-")
                and isinstance(row.get("id"), str)
            ):
                return str(row["name"]), grant_string(client.token(), row["id"])
    name = f"{kind}-{_label(profile)}-{secrets.token_hex(3)}"
    made = new_grant(client, [profile], ttl, name)
    return str(made.get("name", name)), made["grant"]


def new_grant(
    client: DaemonClient, profiles: list[str], ttl: float | None, name: str | None
) -> dict[str, Any]:
    """``POST /grants`` (after the listener's proof): the reply, whose ``grant`` is a string."""
    made = client.create_grant(profiles, ttl, name)
    if not isinstance(made.get("grant"), str):
        raise DaemonError(
            BadReply.status, BadReply.code, "POST /grants returned no grant; is that rolebroker?"
        )
    return made


def _label(profile: str) -> str:
    """The profile as it may appear in a grant name (letters, digits, . _ @ : + -)."""
    kept = "".join(c if c.isalnum() or c in "._@:+-" else "_" for c in profile)[:40]
    return kept if kept[:1].isalnum() else f"p{kept}"[:40]


def grant_file_dir(environ: Mapping[str, str]) -> Path:
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime).joinpath(*GRANT_FILE_DIR)
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).joinpath(*GRANT_FILE_DIR)


def write_grant_file(environ: Mapping[str, str], name: str, grant: str) -> Path:
    """The grant in a private file (0600, directory 0700), for
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; replaced whole, never half-written."""
    directory = grant_file_dir(environ)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = directory / name
    temporary = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(grant)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
