"""Floods and hostile requests against the real daemon: it stays up, answers, and its log
stays small and one line per event. Every loop here is bounded in count and time, and
every socket is closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.server import ServerState

from rolebroker import logs
from rolebroker.authtoken import TokenStore
from rolebroker.broker import Broker
from rolebroker.config import Settings
from rolebroker.connections import ConnectionRegistry, GuardedProtocol, quiet_loop_errors
from rolebroker.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES, ConnectionBudget
from rolebroker.logs import LogThrottle
from rolebroker.server import Guard, create_app
from tests.support.daemon import REPO, AwsHome, Daemon
from tests.support.procs import ManagedProcess
from tests.support.stsproxy import StsProxy

FILE_LIMIT = 1024
FLOOD = 1100
BIG = b"a" * 20000

_RUN_LIMITED = (
    "import resource, runpy, sys; "
    "n = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "sys.argv[0] = 'rolebroker'; "
    "runpy.run_module('rolebroker', run_name='__main__', alter_sys=True)"
)


@dataclass
class LimitedDaemon(Daemon):
    """The daemon under a hard open-files limit (soft = hard, as on many systems)."""

    file_limit: int = FILE_LIMIT

    def __post_init__(self) -> None:
        env = {**self.home.env(self.sts_url), **self.extra_env}
        argv = [sys.executable, "-c", _RUN_LIMITED, str(self.file_limit), "serve", "--port", str(self.port)]
        self.process = ManagedProcess([*argv, *self.args], env, cwd=self.home.root)
        self.wait_ready()


@pytest.fixture
def limited_daemon(aws_home: AwsHome, sts: StsProxy) -> Iterator[LimitedDaemon]:
    daemon = LimitedDaemon(aws_home, sts_url=sts.url)
    try:
        yield daemon
    finally:
        daemon.stop()
        assert not daemon.leaked(), "secrets leaked into the daemon's output"


@contextlib.contextmanager
def open_sockets(port: int, count: int, first_bytes: bytes, deadline: float) -> Iterator[list[socket.socket]]:
    """``count`` connections that each send ``first_bytes`` (an incomplete request) and then
    nothing; all closed on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        if hard != resource.RLIM_INFINITY and hard < count + 256:
            pytest.skip(f"the test process needs {count + 256} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 256, hard))
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            opened.append(sock)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))  # in flight together: dropped SYNs retry in parallel
        with selectors.DefaultSelector() as selector:
            for sock in opened:
                selector.register(sock, selectors.EVENT_WRITE)
            pending = len(opened)
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj  # type: ignore[assignment]
                    selector.unregister(sock)
                    pending -= 1
                    if first_bytes and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        with contextlib.suppress(OSError):  # closed by the daemon: its right
                            sock.send(first_bytes)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def served_in_time(daemon: Daemon, path: str, timeout: float = 1.0) -> float:
    start = time.monotonic()
    response = httpx.get(daemon.base_url + path, headers={"Authorization": daemon.token}, timeout=timeout)
    daemon.remember(response)
    assert response.status_code == 200, response.text
    return time.monotonic() - start


@pytest.mark.parametrize("first_bytes", [b"G", b"GET /creds/dev HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_slow_connection_flood_under_a_1024_file_limit(
    limited_daemon: LimitedDaemon, first_bytes: bytes
) -> None:
    """1,100 connections that never complete a request, at a 1,024-file limit: authorised
    requests are still answered within a second all along, and the log stays a few lines."""
    daemon = limited_daemon
    served_in_time(daemon, "/creds/dev", timeout=15.0)  # warm: the flood is about the HTTP layer
    before = len(daemon.output())
    deadline = time.monotonic() + 20.0
    with open_sockets(daemon.port, FLOOD, first_bytes, deadline) as flood:
        assert len(flood) == FLOOD
        until = time.monotonic() + 4.0  # long enough for every flood connection to reach the daemon
        while time.monotonic() < until:
            assert served_in_time(daemon, "/creds/dev") < 1.0
            time.sleep(0.3)
        with open_sockets(daemon.port, 200, first_bytes, deadline):  # more arrive meanwhile
            assert served_in_time(daemon, "/creds/dev") < 1.0
    assert served_in_time(daemon, "/healthz") < 1.0
    grown = daemon.output()[before:]
    assert "connections open" in grown  # the flood did reach the daemon's cap
    assert len(grown) < 2000, grown[:2000]
    assert "Traceback" not in grown
    assert daemon.process.running()


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the daemon closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


def json_error(raw: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), raw[:300]
    parsed = httpx.Response(status, content=body).json()
    assert set(parsed) == {"code", "message"}
    return status, parsed


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", 400, "BadRequest"),
        (b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\nHost: 127.0.0.1\r\n\r\n", 400, "BadRequest"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "BadRequest"),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 403, "ForbiddenHost"),
        (b"POST /mfa/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n", 400, "BadRequest"),
        (
            b"POST /mfa/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            400,
            "BadRequest",
        ),
        (b"GARBAGE\r\n\r\n", 400, "BadRequest"),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + BIG + b"\r\n\r\n", 431, "HeadersTooLarge"),
    ],
)
def test_malformed_http_gets_the_json_error_shape(
    daemon: Daemon, request_bytes: bytes, status: int, code: str
) -> None:
    got_status, body = json_error(raw_exchange(daemon.port, request_bytes))
    assert (got_status, body["code"]) == (status, code)
    assert daemon.get("/healthz", token=None).status_code == 200


def test_requested_names_cannot_forge_log_lines(daemon: Daemon, aws_home: AwsHome) -> None:
    """CR, LF and ESC in a requested profile name reach the log escaped (the reload it triggers
    and the refusal both name it), never raw."""
    evil = "x%0d%0a2031-01-01T00:00:00Z%20ERROR%20forged%20line%1b[31mred%e2%80%ae"
    aws_home.config_path.write_text(aws_home.config_path.read_text() + "\n")  # forces a reload on a miss
    response = daemon.get("/creds/" + evil)
    assert response.status_code == 404
    time.sleep(0.3)
    output = daemon.output()
    assert "\n2031-01-01T00:00:00Z ERROR forged" not in output
    assert "\x1b" not in output and "\r" not in output and "\u202e" not in output
    assert r"x\r\n2031-01-01T00:00:00Z ERROR forged line\x1b[31mred\u202e" in output


def test_refusals_are_logged_once_per_kind_under_a_flood(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.base_url, timeout=5) as client:
        for _ in range(50):
            assert client.get("/creds/dev", headers={"Authorization": "x" * 43}).status_code == 403
            assert client.get("/creds/nope", headers={"Authorization": daemon.token}).status_code == 404
            assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 403
    time.sleep(0.3)
    lines = daemon.output().splitlines()
    for code in ("InvalidToken", "ProfileNotFound", "ForbiddenHost"):
        refused = [line for line in lines if "refused" in line and f"code={code}" in line]
        assert len(refused) == 1, (code, refused)


def test_aborted_upload_is_not_an_error(daemon: Daemon) -> None:
    head = (
        f"POST /mfa/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {daemon.token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
            sock.sendall(head + b'{"code": "12')
            time.sleep(0.2)
    time.sleep(0.5)
    output = daemon.output()
    assert "Traceback" not in output and "ERROR" not in output, output[-2000:]
    assert daemon.get("/healthz", token=None).status_code == 200


def test_oversized_body_is_refused_before_it_is_read(daemon: Daemon) -> None:
    raw = raw_exchange(
        daemon.port,
        f"POST /mfa/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {daemon.token}\r\n"
        "Content-Length: 1500000000\r\n\r\n".encode(),
    )
    status, body = json_error(raw)
    assert (status, body["code"]) == (413, "PayloadTooLarge")
    assert re.search(rb"connection: close", raw, re.IGNORECASE)


# -- in process: the ASGI app over httpx.ASGITransport ---------------------------------------------

TOKEN = "t" * 43


def guard_around(app: ASGIApp) -> Guard:
    return Guard(app, TokenStore(TOKEN, Path("/nonexistent/token")), LogThrottle(logging.getLogger("test")))


@pytest.fixture
async def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    home = AwsHome(tmp_path)
    home.write()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home.config_path))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home.credentials_path))
    broker = Broker(Settings(token_file=tmp_path / "token"))
    await broker.reload(reread_settings=False)
    transport = httpx.ASGITransport(app=create_app(broker, TokenStore(TOKEN, tmp_path / "token")))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", headers={"Authorization": TOKEN}
    ) as client:
        client.broker = broker  # type: ignore[attr-defined]
        yield client


def assert_json_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code
    return str(body["message"])


async def test_body_over_the_limit_is_413(app_client: httpx.AsyncClient) -> None:
    big = b'{"code": "123456", "pad": "' + b"a" * MAX_BODY_BYTES + b'"}'
    assert_json_error(await app_client.post("/mfa/dev", content=big), 413, "PayloadTooLarge")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the streamed bytes are counted
        for _ in range(8):
            yield b"a" * 1024

    response = await app_client.post("/mfa/dev", content=chunked())
    assert_json_error(response, 413, "PayloadTooLarge")
    assert response.headers["connection"] == "close"


async def test_declared_length_over_the_limit_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not run")

    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body must not be read")

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/mfa/dev",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", TOKEN.encode()),
            (b"content-length", b"1500000000"),
        ],
    }
    await guard_around(app)(scope, receive, send)
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]


async def test_deeply_nested_json_is_400_not_500(app_client: httpx.AsyncClient) -> None:
    for body in (b"[" * 1024, b'{"code": ' + b"[" * 1000 + b"]" * 1000 + b"}"):
        assert_json_error(await app_client.post("/mfa/dev", content=body), 400, "InvalidMfaCode")


async def test_bearer_prefix_is_named_in_the_refusal(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/creds/dev", headers={"Authorization": f"Bearer {TOKEN}"})
    message = assert_json_error(response, 403, "InvalidToken")
    assert "raw token" in message and "Bearer" in message
    message = assert_json_error(
        await app_client.get("/creds/dev", headers={"Authorization": "x"}), 403, "InvalidToken"
    )
    assert "Bearer" not in message


async def test_two_host_headers_are_refused(app_client: httpx.AsyncClient) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not run")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    for hosts in (
        [b"127.0.0.1", b"evil.example"],
        [b"evil.example", b"127.0.0.1"],
        [b"localhost", b"localhost"],
    ):
        sent.clear()
        scope: Scope = {
            "type": "http",
            "method": "GET",
            "path": "/healthz",
            "headers": [(b"host", host) for host in hosts],
        }
        await Guard(
            app, TokenStore(TOKEN, Path("/nonexistent/token")), LogThrottle(logging.getLogger("test"))
        )(scope, send, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == 403


async def test_unknown_profile_names_leave_no_state_behind(app_client: httpx.AsyncClient) -> None:
    """Each unknown name used to be remembered for good (its error memoised per name: +78 MB
    for 40,000 names). Nothing per name may stay for names that are not profiles."""
    broker: Broker = app_client.broker  # type: ignore[attr-defined]
    catalog = broker._catalog
    assert catalog is not None
    kept_before = (len(catalog._built), len(broker._last_used), len(broker._requests))
    for i in range(300):
        assert (await app_client.get(f"/creds/unknown-{i:05d}")).status_code == 404
        assert (await app_client.post(f"/mfa/unknown-{i:05d}", json={"code": "123456"})).status_code == 404
    assert (len(catalog._built), len(broker._last_used), len(broker._requests)) == kept_before


# -- in process: the connection protocol on a loopback server with short limits ---------------------


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(2)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def protocol_server(cap: int, request_timeout: float) -> AsyncIterator[tuple[int, ConnectionRegistry]]:
    registry = ConnectionRegistry(cap)
    protocol = type(
        "TestProtocol", (GuardedProtocol,), {"registry": registry, "request_timeout": request_timeout}
    )
    config = uvicorn.Config(
        ok_app, http=protocol, log_config=None, lifespan="off", h11_max_incomplete_event_size=MAX_HEADER_BYTES
    )
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], registry
    finally:
        server.close()
        for conn in list(state.connections):
            conn.shutdown()
        await server.wait_closed()


async def read_all(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def test_connection_that_never_completes_its_request_is_closed() -> None:
    async with protocol_server(cap=16, request_timeout=0.5) as (port, _):
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(4):  # bytes keep coming, faster than the deadline, but never a whole request
            await asyncio.sleep(0.1)
            slow_writer.write(b"X-Slow: 1\r\n")
        assert await read_all(idle_reader) == b""
        answer = await read_all(slow_reader)
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"RequestTimeout"' in answer
        for writer in (idle_writer, slow_writer):
            writer.close()


async def test_at_the_cap_the_oldest_waiting_connection_makes_room() -> None:
    async with protocol_server(cap=3, request_timeout=30) as (port, registry):
        waiting = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert len(registry) == 3
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (await read_all(reader)).startswith(b"HTTP/1.1 200 ")
        assert await read_all(waiting[0][0]) == b""  # the oldest was closed for it
        assert len(registry) <= 3
        for _, w in [*waiting, (reader, writer)]:
            w.close()


async def test_when_every_connection_is_busy_newcomers_get_503_at_once() -> None:
    async with protocol_server(cap=2, request_timeout=30) as (port, _):
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in busy:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await read_all(reader, timeout=1.0)
        assert answer.startswith(b"HTTP/1.1 503 ") and b'"code":"ServerBusy"' in answer
        for _, w in [*busy, (reader, writer)]:
            w.close()


# -- logging: one escape for every line, one line per kind and window -------------------------------


def test_every_log_line_is_escaped_by_the_formatter() -> None:
    """Whatever a log call passes (here a raw name, not even %r), the line stays one line."""
    record = logging.LogRecord(
        "rolebroker", logging.WARNING, __file__, 1, "unknown %s", ("a\r\nFAKE ERROR\x1b[2J\u202eb",), None
    )
    line = logs._TerminalFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.endswith(r"unknown a\x0d\x0aFAKE ERROR\x1b[2J\u202eb")
    try:
        raise ValueError("bad\x1b[31m")
    except ValueError:
        record = logging.LogRecord("rolebroker", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    text = logs._TerminalFormatter().format(record)
    assert "Traceback" in text and "\x1b" not in text and r"bad\x1b[31m" in text


def test_throttle_logs_once_per_window_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("rolebroker.test"), window=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="rolebroker.test"):
        for _ in range(1000):
            throttle.log(logging.WARNING, "InvalidToken", "refused code=%s", "InvalidToken")
        throttle.log(logging.WARNING, "ForbiddenHost", "refused code=%s", "ForbiddenHost")
        now[0] = 61.0
        throttle.log(logging.WARNING, "InvalidToken", "refused code=%s", "InvalidToken")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("refused code=InvalidToken") and lines[1].startswith(
        "refused code=ForbiddenHost"
    )
    assert "999 more" in lines[2]


async def test_failed_accepts_are_one_line_not_a_traceback_each(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio reports every failed accept() (EMFILE) with a traceback, many per second."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    quiet_loop_errors(loop)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(200):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
    finally:
        loop.set_exception_handler(previous)
    assert len(caplog.records) == 1
    assert "Too many open files" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None


RAISE_AND_REPORT = (
    "import resource; from rolebroker.limits import raise_file_limit; "
    "print(raise_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
)


def test_soft_file_limit_is_raised_to_the_hard_one_and_the_cap_leaves_headroom() -> None:
    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))

    result = subprocess.run(
        [sys.executable, "-c", RAISE_AND_REPORT],
        preexec_fn=low_soft_limit,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert result.stdout.split() == ["2048", "2048"], result.stderr
    budget = ConnectionBudget.for_file_limit(1024)
    assert budget.max_connections + 3 * budget.accept_batch < 1024 - 32
    assert ConnectionBudget.for_file_limit(1 << 20).max_connections == 4096
