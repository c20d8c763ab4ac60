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
from concurrent.futures import Executor
from typing import Any

from rolebroker.identity import UNKNOWN, CallerIdentity, lookup_peer

CALLER_EXTENSION = "rolebroker.caller"


class PeerLookup:
    """The identity of one connection's peer, looked up in a worker thread when a request
    first needs it (a connection that never sends a whole request costs nothing): the uid
    (one netlink query) before a request is answered, the process (a walk of /proc, slower
    the more files are open) only for the audit line of a credential request, after the
    answer. Each is looked up at most once per connection."""

    __slots__ = ("_full", "_full_value", "_local", "_loop", "_original", "_peer", "_uid", "_uid_value")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        local: Any,
        peer: Any,
        value: CallerIdentity | None = None,
        original: tuple[str, int] | None = None,
    ) -> None:
        """``original``: where the client connected before a NAT redirect moved it to
        ``local`` (``rolebroker port80``; identity.original_destination)."""
        self._loop = loop
        self._local = local
        self._peer = peer
        self._original = original
        self._full: asyncio.Future[CallerIdentity] | None = None
        self._uid: asyncio.Future[CallerIdentity] | None = None
        unknown = value is None and (not local or not peer)
        self._full_value: CallerIdentity | None = UNKNOWN if unknown else value
        self._uid_value: CallerIdentity | None = self._full_value

    @classmethod
    def known(cls, identity: CallerIdentity) -> PeerLookup:
        """An identity already known (tests, or a listener that knows its callers)."""
        return cls(None, None, None, identity)

    async def get(self) -> CallerIdentity:
        """The peer's uid (with its process too when that is already known)."""
        if self._full_value is not None:
            return self._full_value
        if self._uid_value is not None:
            return self._uid_value
        if self._uid is None:
            self._uid = self._start(find_process=False)
        self._uid_value = await _settled(self._uid)
        return self._uid_value

    def with_process(self, executor: Executor | None) -> asyncio.Future[CallerIdentity] | CallerIdentity:
        """The peer with its process (pid, exe, command line, cwd): the identity when known,
        else a future from ``executor`` (one lookup per connection, shared)."""
        if self._full_value is not None:
            return self._full_value
        if self._full is None:
            self._full = self._start(find_process=True, executor=executor)
            self._full.add_done_callback(self._keep)
        return self._full

    def _keep(self, future: asyncio.Future[CallerIdentity]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._full_value = future.result()

    def _start(
        self, *, find_process: bool, executor: Executor | None = None
    ) -> asyncio.Future[CallerIdentity]:
        loop = self._loop or asyncio.get_running_loop()
        local, peer, original = self._local, self._peer, self._original
        me = os.getpid()  # the daemon's own sockets are never the client's: not walked
        return loop.run_in_executor(
            executor,
            lambda: lookup_peer(local, peer, find_process=find_process, exclude=me, original=original),
        )


async def _settled(future: asyncio.Future[CallerIdentity]) -> CallerIdentity:
    try:
        # shield: a request cancelled while waiting must not cancel the connection's lookup
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        raise
    except Exception:
        return UNKNOWN


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
