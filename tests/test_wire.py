"""wire.py, the CLI's HTTP/1.1 client, against tiny scripted servers on 127.0.0.1: what it
reads, what it refuses within fixed bounds, its deadline, and that it never reconnects.
Plus DaemonClient's messages for the failures it maps."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rolebroker.authtoken import listener_proof
from rolebroker.cli import wire
from rolebroker.cli.client import PROOF_BYTES, ClientError, DaemonClient, DaemonUnreachable
from rolebroker.config import Settings

Script = bytes | Callable[[socket.socket, bytes], None]
"""A reply: bytes to send, or a function of the connection and the request it answers."""

HOST = {"Host": "127.0.0.1"}


class Server:
    """Accepts connections on 127.0.0.1 until stopped; on each, answers the requests in
    order from ``replies`` (shared across connections), then closes if ``close_after``.
    Counts connections, so a test can see that the client never reconnected."""

    def __init__(self, replies: list[Script], close_after: bool = False) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):  # the client gave up: what a test wants to see
                    self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        while self.replies and not self._stop.is_set():
            request = _read_request(conn)
            if request is None:
                return
            self.requests.append(request)
            reply = self.replies.pop(0)
            if callable(reply):
                reply(conn, request)
            else:
                conn.sendall(reply)
        if not self.close_after:
            while not self._stop.is_set() and conn.recv(4096):  # until the client closes
                pass


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(4096)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    while length and len(body) < int(length.group(1)):
        body += conn.recv(4096)
    return data


Serve = Callable[..., Server]


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(replies: list[Script], close_after: bool = False) -> Server:
        servers.append(Server(replies, close_after))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def exchange(server: Server, timeout: float = 5.0, **kwargs: int) -> wire.Response:
    with wire.connect("127.0.0.1", server.port, timeout) as connection:
        return connection.exchange("GET", "/x", HOST, **kwargs)


def test_two_replies_on_one_keep_alive_connection(serve: Serve) -> None:
    server = serve([ok(b'{"a": 1}'), ok(b"second", b"X-Two: 2\r\n")])
    with wire.connect("127.0.0.1", server.port, 5) as connection:
        first = connection.exchange("GET", "/one", HOST)
        second = connection.exchange("POST", "/two", {**HOST, "Content-Type": "application/json"}, b"{}")
    assert (first.status, first.body, first.will_close) == (200, b'{"a": 1}', False)
    assert (second.body, second.header("x-two")) == (b"second", "2")
    assert server.accepted == 1
    assert server.requests[0].startswith(
        b"GET /one HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: 127.0.0.1\r\n"
    )
    assert b"Content-Length: 2\r\n\r\n{}" in server.requests[1]


def test_chunked_body_with_extensions_and_trailers(serve: Serve) -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    server = serve([reply, ok(b"after")])
    with wire.connect("127.0.0.1", server.port, 5) as connection:
        assert connection.exchange("GET", "/x", HOST).body == b"hello world"
        assert connection.exchange("GET", "/y", HOST).body == b"after"  # the stream stayed in step


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhelloo\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n",
    ],
)
def test_malformed_replies_are_refused(serve: Serve, reply: bytes) -> None:
    server = serve([reply], close_after=True)
    with pytest.raises(wire.MalformedReply):
        exchange(server)


def test_duplicate_content_length_that_agrees_is_read(serve: Serve) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"])
    assert exchange(server).body == b"hello"


def test_no_length_is_read_until_close_and_the_connection_is_then_closed(
    serve: Serve,
) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"], close_after=True)
    with wire.connect("127.0.0.1", server.port, 5) as connection:
        response = connection.exchange("GET", "/x", HOST)
        assert (response.body, response.will_close) == (b"until the end", True)
        with pytest.raises(wire.NotConnected):
            connection.exchange("GET", "/x", HOST)


@pytest.mark.parametrize(
    "reply",
    [
        ok(b"bye", b"Connection: close\r\n"),
        ok(b"bye", b"Connection: Keep-Alive, CLOSE\r\n"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye",  # 1.0 without keep-alive: closes
    ],
)
def test_connection_close_then_a_second_request_fails_without_reconnecting(
    serve: Serve, reply: bytes
) -> None:
    server = serve([reply, ok(b"must not be asked")])
    with wire.connect("127.0.0.1", server.port, 5) as connection:
        first = connection.exchange("GET", "/x", HOST)
        assert (first.body, first.will_close) == (b"bye", True)
        with pytest.raises(wire.NotConnected):
            connection.exchange("GET", "/secret", {**HOST, "Authorization": "token"})
    time.sleep(0.2)  # room for a reconnect to reach the listener, had there been one
    assert server.accepted == 1
    assert len(server.requests) == 1


def test_http_1_0_with_keep_alive_stays_open(serve: Serve) -> None:
    server = serve(
        [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi", ok(b"again")]
    )
    with wire.connect("127.0.0.1", server.port, 5) as connection:
        assert connection.exchange("GET", "/x", HOST).will_close is False
        assert connection.exchange("GET", "/x", HOST).body == b"again"


def _stream(head: bytes, filler: bytes, count: int) -> Script:
    """Send ``head`` then ``filler`` ``count`` times (the same object: no memory on this side)."""

    def send(conn: socket.socket, _request: bytes) -> None:
        conn.sendall(head)
        for _ in range(count):
            conn.sendall(filler)

    return send


def _peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


MIB = 1024 * 1024
BLOCK = b"a" * (64 * 1024)
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "filler", "limit"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Long: ", BLOCK, wire.BODY_BYTES),  # one endless header line
        (b"HTTP/1.1 200 OK\r\n", b"X-Many: 1\r\n" * 5000, wire.BODY_BYTES),  # endless header lines
        (b"HTTP/1.1 200 OK", BLOCK, wire.BODY_BYTES),  # an endless status line
        (b"HTTP/1.1 200 OK\r\n\r\n", BLOCK, 256 * 1024),  # a body until close, endless
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"10000\r\n" + BLOCK + b"\r\n",
            256 * 1024,
        ),
        (CHUNKED + b"1", b"0" * 4096, wire.BODY_BYTES),
    ],
)
def test_endless_replies_are_refused_with_bounded_memory(
    serve: Serve, head: bytes, filler: bytes, limit: int
) -> None:
    server = serve([_stream(head, filler, 10 * MIB // len(filler))], close_after=True)

    def refused() -> None:
        with pytest.raises(wire.ReplyTooLarge):
            exchange(server, body_limit=limit)

    peak = _peak_bytes(refused)
    assert peak < limit + 2 * MIB, peak


def test_too_many_header_lines_are_refused(serve: Serve) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"Content-Length: 0\r\n\r\n"])
    with pytest.raises(wire.ReplyTooLarge, match="more than 100 lines"):
        exchange(server)


def test_a_content_length_over_the_cap_is_refused_before_reading(serve: Serve) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"])
    with pytest.raises(wire.ReplyTooLarge, match="5000 bytes"):
        exchange(server, body_limit=4096)


def test_a_dripping_server_ends_at_the_deadline(serve: Serve) -> None:
    def drip(conn: socket.socket, _request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(100):  # 10 s in all, far past the client's 0.5 s
            conn.sendall(b"a")
            time.sleep(0.1)

    server = serve([drip], close_after=True)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        exchange(server, timeout=0.5)
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", wire.RemoteDisconnected),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", wire.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nContent-Len", wire.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", wire.IncompleteRead),
    ],
)
def test_a_reply_cut_short_is_an_error(serve: Serve, reply: bytes, error: type[Exception]) -> None:
    server = serve([reply], close_after=True)
    with pytest.raises(error):
        exchange(server)


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/x", {"Authorization": "tok\r\nX-Injected: 1"}),
        ("GET", "/x HTTP/1.1\r\nX: y", {}),
        ("GET", "/x", {"X\nY": "1"}),
        ("G ET", "/x", {}),
        ("GET", "http://elsewhere/", {}),
    ],
)
def test_a_request_head_cannot_be_smuggled(
    serve: Serve, method: str, target: str, headers: dict[str, str]
) -> None:
    server = serve([ok(b"")])
    with wire.connect("127.0.0.1", server.port, 5) as connection, pytest.raises(ValueError):
        connection.exchange(method, target, headers)
    assert server.requests == []


# -- DaemonClient's messages --------------------------------------------------------------------


def _client(tmp_path: Path, port: int) -> DaemonClient:
    token_file = tmp_path / "token"
    token_file.write_text("test-token\n")
    return DaemonClient(Settings(port=port, token_file=token_file))


def _proof(close: bool) -> Script:
    """The real proof for the nonce received: this server knows the token."""

    def send(conn: socket.socket, request: bytes) -> None:
        found = re.search(rb"nonce=([0-9a-f]+)", request)
        assert found is not None, request
        port: int = conn.getsockname()[1]
        answer = listener_proof("test-token", bytes.fromhex(found.group(1).decode()), "127.0.0.1", port)
        conn.sendall(ok(b'{"proof": "%s"}' % answer.encode(), b"Connection: close\r\n" if close else b""))

    return send


def test_client_a_proven_daemon_answers(serve: Serve, tmp_path: Path) -> None:
    server = serve([_proof(close=False), ok(b'{"status": "ok"}')])
    reply = _client(tmp_path, server.port).request("GET", "/status")
    assert (reply.status, reply.json_object()) == (200, {"status": "ok"})
    assert server.accepted == 1 and b"Authorization: test-token" in server.requests[1]


def test_client_close_after_the_proof_is_reported_and_the_token_never_sent(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve([_proof(close=True), ok(b"{}")])
    with pytest.raises(DaemonUnreachable, match="closed the connection after its proof"):
        _client(tmp_path, server.port).request("GET", "/status")
    time.sleep(0.2)
    assert server.accepted == 1 and len(server.requests) == 1


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            b"garbage\r\n\r\n",
            r"cannot talk to rolebroker on 127\.0\.0\.1:\d+ \(MalformedReply: bad status",
        ),
        (b"", r"cannot talk to rolebroker on 127\.0\.0\.1:\d+ \(RemoteDisconnected: "),
    ],
)
def test_client_garbage_is_daemon_unreachable(
    serve: Serve, tmp_path: Path, reply: bytes, message: str
) -> None:
    server = serve([reply], close_after=True)
    with pytest.raises(DaemonUnreachable, match=message):
        _client(tmp_path, server.port).request("GET", "/healthz", authorize=False)


def test_client_a_dripping_daemon_is_reported_at_the_timeout(serve: Serve, tmp_path: Path) -> None:
    def drip(conn: socket.socket, _request: bytes) -> None:
        for _ in range(100):
            conn.sendall(b"H")
            time.sleep(0.1)

    server = serve([drip], close_after=True)
    start = time.monotonic()
    with pytest.raises(DaemonUnreachable, match="did not answer GET /healthz within 1s"):
        _client(tmp_path, server.port).request("GET", "/healthz", authorize=False, timeout=0.6)
    assert time.monotonic() - start < 2


def test_client_an_oversized_proof_reply_is_a_listener_that_did_not_prove(
    serve: Serve, tmp_path: Path
) -> None:
    """As with http.client's capped read: more than PROOF_BYTES is no proof, and no token is sent."""
    server = serve([ok(b'{"proof": "' + b"0" * PROOF_BYTES + b'"}'), ok(b"{}")])
    with pytest.raises(ClientError, match="could not prove it knows the token"):
        _client(tmp_path, server.port).request("GET", "/status")
    assert len(server.requests) == 1
