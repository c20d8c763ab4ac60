"""How much any local process can make the daemon hold: file descriptors, connections,
request bodies, time to send a request. A per-user daemon is reachable by every local
user (without a token for the connection itself), so each of these is bounded."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger("rolebroker")

MAX_BODY_BYTES = 4096
"""The only body the daemon reads is ``{"code": "123456"}``."""
MAX_HEADER_BYTES = 16 * 1024
"""Request line plus headers; SDKs send well under 2 KiB."""
REQUEST_TIMEOUT = 10.0
"""From connect (or the previous answer) until the whole request has arrived."""
KEEP_ALIVE = 5.0
"""An idle keep-alive connection is closed after this long."""
MAX_CONNECTIONS = 4096
"""More than any user's SDKs hold open; each one costs a file descriptor and some memory."""
_FILE_LIMIT_CEILING = 1 << 20


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """How many connections fit in the file limit, with room for everything else the
    daemon opens (STS sockets, config files, mfa_process pipes) and for the connections
    asyncio accepts in one batch before the cap can act on them."""

    max_connections: int
    accept_batch: int

    @classmethod
    def for_file_limit(cls, file_limit: int) -> ConnectionBudget:
        headroom = max(128, file_limit // 4)
        cap = max(16, min(MAX_CONNECTIONS, file_limit - headroom))
        batch = max(8, min(256, headroom // 4))
        return cls(max_connections=cap, accept_batch=batch)


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (1024 is a common soft default) and
    return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _FILE_LIMIT_CEILING if hard == resource.RLIM_INFINITY else min(hard, _FILE_LIMIT_CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, wanted, exc)
    return _FILE_LIMIT_CEILING if soft == resource.RLIM_INFINITY else int(soft)
