"""Who calls: one identity lookup per connection, off the event loop, and the last caller of
each profile for ``/status``.

connections.py starts a :class:`PeerLookup` when a connection is made and hands it to the app
in the ASGI scope (``scope["extensions"][CALLER_EXTENSION]``); the Guard awaits it only when a
request needs it, and every later request on the same connection gets the answer at once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from rolebroker.identity import UNKNOWN, CallerIdentity, lookup_peer

CALLER_EXTENSION = "rolebroker.caller"


class PeerLookup:
    """The identity of one connection's peer, looked up once in a worker thread."""

    __slots__ = ("_future", "_value")

    def __init__(
        self, future: asyncio.Future[CallerIdentity] | None, value: CallerIdentity | None = None
    ) -> None:
        self._future = future
        self._value = value

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop, local: Any, peer: Any) -> PeerLookup:
        """``local``/``peer``: the transport's sockname and peername (None when unknown)."""
        if not local or not peer:
            return cls(None, UNKNOWN)
        return cls(loop.run_in_executor(None, lookup_peer, local, peer))

    @classmethod
    def known(cls, identity: CallerIdentity) -> PeerLookup:
        return cls(None, identity)

    async def get(self) -> CallerIdentity:
        if self._value is not None:
            return self._value
        assert self._future is not None
        try:
            # shield: a request cancelled while waiting must not cancel the lookup of the connection
            value = await asyncio.shield(self._future)
        except asyncio.CancelledError:
            raise
        except Exception:
            value = UNKNOWN
        self._value = value
        return value


def caller_of(scope: Mapping[str, Any]) -> PeerLookup | None:
    extensions = scope.get("extensions")
    found = extensions.get(CALLER_EXTENSION) if extensions else None
    return found if isinstance(found, PeerLookup) else None


def identity_method() -> str:
    """How this machine tells who is on the other end of a connection: ``netlink``
    (sock_diag), ``proc`` (/proc/net/tcp) or ``unavailable`` (then no uid check is made)."""
    if not sys.platform.startswith("linux"):
        return "unavailable"
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4).close()
        return "netlink"
    except (OSError, AttributeError):
        pass
    return "proc" if os.access("/proc/net/tcp", os.R_OK) else "unavailable"
