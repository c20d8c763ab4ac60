"""Connections: how many the daemon holds, how long one may take to send its request, and
what a malformed one is answered.

uvicorn's h11 protocol gives a connection that never completes its request unlimited time
and accepts connections until the process runs out of file descriptors; then accept()
fails in a loop and nobody is served. This protocol keeps the number of connections under
a cap derived from the file limit (at the cap, the oldest connection that has not sent a
whole request is closed so that a real request still gets in), closes requests that do not
arrive whole within REQUEST_TIMEOUT, answers malformed HTTP with the JSON error shape and
logs all of it at most once a minute per kind.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from rolebroker.callers import CALLER_EXTENSION, PeerLookup
from rolebroker.errors import BadRequest, BrokerError, HeadersTooLarge, RequestTimeout, ServerBusy
from rolebroker.limits import KEEP_ALIVE, MAX_HEADER_BYTES, REQUEST_TIMEOUT, ConnectionBudget
from rolebroker.logs import LogThrottle

log = logging.getLogger("rolebroker")


class _ProtocolLogger(logging.Logger):
    """uvicorn's own per-connection lines under ``rolebroker``, each kind at most once a
    minute (a flood of bad requests must not become a flood of log lines)."""

    def __init__(self, throttle: LogThrottle) -> None:
        super().__init__("rolebroker.http", logging.WARNING)
        self.parent = log
        self._throttle = throttle

    def handle(self, record: logging.LogRecord) -> None:
        if record.msg == "Invalid HTTP request received.":
            return  # answered and logged by GuardedProtocol.send_400_response
        folded = self._throttle.allow(f"uvicorn:{record.msg}")
        if folded is None:
            return
        if folded:
            record.msg = f"{record.msg}{self._throttle.suffix(folded)}"
        super().handle(record)


class ConnectionRegistry:
    """Open connections of one server, in the order they may be closed to make room.

    ``waiting`` holds connections that never had a request in progress (idle since
    connect, or still sending headers), oldest first: the first to go. ``idle`` holds
    keep-alive connections between requests. Connections with a request in progress are
    never closed to make room; when every connection is busy, newcomers are shed.
    """

    def __init__(self, cap: int, *, window: float = 60.0) -> None:
        self.cap = cap
        self.throttle = LogThrottle(log, window=window)
        self.logger = _ProtocolLogger(LogThrottle(log, window=window))
        self._members: set[GuardedProtocol] = set()
        self._waiting: dict[GuardedProtocol, None] = {}
        self._idle: dict[GuardedProtocol, None] = {}

    def __len__(self) -> int:
        return len(self._members)

    def admit(self, conn: GuardedProtocol) -> bool:
        """Register ``conn``, closing the oldest waiting (else idle) one at the cap. False
        when every open connection is busy: the caller sheds ``conn``."""
        if len(self._members) >= self.cap:
            victim = next(iter(self._waiting), None) or next(iter(self._idle), None)
            if victim is None:
                self.throttle.log(
                    logging.WARNING,
                    "shed",
                    "all %d connections are busy: new connections get 503 ServerBusy",
                    self.cap,
                )
                return False
            self.throttle.log(
                logging.WARNING,
                "evict",
                "%d connections open (the cap for this open-files limit): closing the oldest "
                "that has not sent a whole request",
                self.cap,
            )
            self.release(victim)
            victim.evict()
        self._members.add(conn)
        self._waiting[conn] = None
        return True

    def busy(self, conn: GuardedProtocol) -> None:
        self._waiting.pop(conn, None)
        self._idle.pop(conn, None)

    def idle(self, conn: GuardedProtocol) -> None:
        if conn in self._members:
            self.busy(conn)
            self._idle[conn] = None

    def release(self, conn: GuardedProtocol) -> None:
        self.busy(conn)
        self._members.discard(conn)


class _ObservedConnection(h11.Connection):
    """h11's connection, telling the protocol when a request starts and ends and keeping
    the last protocol error (its status hint tells 400 from 431)."""

    def __init__(self, owner: GuardedProtocol, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self._owner = owner
        self._max_head = max_incomplete_event_size
        self.last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise
        if isinstance(event, h11.Request):
            size = len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers)
            if size > self._max_head:  # h11 only limits heads that arrive in pieces
                self.last_error = h11.RemoteProtocolError("request head too large", error_status_hint=431)
                raise self.last_error
            self._owner.request_started()
        elif isinstance(event, h11.EndOfMessage):
            self._owner.request_received()
        return event


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, a request deadline and JSON errors."""

    registry: ClassVar[ConnectionRegistry]
    request_timeout: ClassVar[float] = REQUEST_TIMEOUT

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._observed = _ObservedConnection(self, config.h11_max_incomplete_event_size or MAX_HEADER_BYTES)
        self.conn = self._observed
        self.logger = self.registry.logger
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False
        """Bytes of a request that has not arrived whole yet."""

    # -- lifecycle -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.registry.admit(self):
            self._answer(ServerBusy("too many open connections; retry in a second"))
            return
        self._arm()
        # Who is on the other end, looked up once per connection in a worker thread; the app
        # awaits it only for requests that need it (see callers.py).
        caller = PeerLookup.start(
            self.loop, transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        )
        inner = self.app

        async def with_caller(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})[CALLER_EXTENSION] = caller
            await inner(scope, receive, send)

        self.app = with_caller

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.registry.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)

    def evict(self) -> None:
        """Closed to make room for a newer connection; the client sent no whole request."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()

    # -- called by _ObservedConnection and uvicorn ------------------------------------------

    def request_started(self) -> None:
        self.registry.busy(self)

    def request_received(self) -> None:
        self._partial = False
        if self.conn.our_state is h11.DONE:
            return  # the rest of a body answered early: the deadline for the next request runs
        self._disarm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self.registry.idle(self)
            self._arm()  # before super(): it may run a pipelined request, which disarms again
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP (uvicorn answers it in plain text): the JSON error shape instead."""
        error = self._observed.last_error
        reason = str(error or msg)[:120] or "malformed request"
        self.registry.throttle.log(logging.WARNING, "malformed", "refused malformed HTTP: %s", reason)
        if error is not None and error.error_status_hint == 431:
            self._answer(HeadersTooLarge(f"request line and headers must fit in {MAX_HEADER_BYTES} bytes"))
            return
        self._answer(BadRequest(f"malformed HTTP request: {reason}; send one Host header and valid framing"))

    # -- the request deadline ----------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._partial:
            self.transport.close()  # connected and never said a word: nothing worth a log line
            return
        self.registry.throttle.log(
            logging.INFO,
            "timeout",
            "closed a connection that sent no whole request within %.0fs",
            self.request_timeout,
        )
        if self.conn.our_state is h11.IDLE:
            self._answer(RequestTimeout(f"send the whole request within {self.request_timeout:.0f}s"))
        else:
            self.transport.close()  # a body still trickling in: the app sees a disconnect

    def _answer(self, error: BrokerError) -> None:
        """A JSON error written straight to the socket, then close."""
        body = json.dumps(error.to_json(), separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items() if k != "Connection"]
        try:
            reason = http.HTTPStatus(error.status).phrase.encode()
            for event in (
                h11.Response(status_code=error.status, headers=headers, reason=reason),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                data = self.conn.send(event)
                if data:
                    self.transport.write(data)
        except h11.LocalProtocolError:
            pass  # too late for an answer on this connection
        self.transport.close()


def connection_limits(file_limit: int) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for a server under ``file_limit`` open files."""
    budget = ConnectionBudget.for_file_limit(file_limit)
    registry = ConnectionRegistry(budget.max_connections)
    protocol = type("RolebrokerHttpProtocol", (GuardedProtocol,), {"registry": registry})
    log.debug(
        "open-files limit %d: at most %d connections, %d accepted per batch",
        file_limit,
        budget.max_connections,
        budget.accept_batch,
    )
    return {
        "http": protocol,
        "backlog": budget.accept_batch,
        "timeout_keep_alive": KEEP_ALIVE,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


def quiet_loop_errors(loop: asyncio.AbstractEventLoop, *, window: float = 60.0) -> None:
    """asyncio logs a traceback per failed accept() once the file limit is reached (many per
    second under a flood): one line per kind and minute instead."""
    throttle = LogThrottle(log, window=window)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        exc = context.get("exception")
        if message.startswith("socket.accept() out of system resource"):
            throttle.log(
                logging.WARNING,
                "accept",
                "cannot accept connections: %s; retrying (too many open files?)",
                getattr(exc, "strerror", None) or type(exc).__name__,
            )
            return
        folded = throttle.allow(f"loop:{type(exc).__name__}")
        if folded is not None:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
