"""Floods and hostile requests against the real daemon: it stays up, answers, and its log
stays small and one line per event. Every loop here is bounded in count and time, and
every socket is closed."""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.daemon import AwsHome, Daemon
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


@pytest.mark.parametrize("first_bytes", [b"", b"GET /creds/dev HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_slow_connection_flood_under_a_1024_file_limit(
    limited_daemon: LimitedDaemon, first_bytes: bytes
) -> None:
    """1,100 idle or header-trickling connections at a 1,024-file limit: authorised requests
    are still answered within a second, and the log stays a few lines long."""
    daemon = limited_daemon
    served_in_time(daemon, "/creds/dev", timeout=15.0)  # warm: the flood is about the HTTP layer
    before = len(daemon.output())
    deadline = time.monotonic() + 20.0
    with open_sockets(daemon.port, FLOOD, first_bytes, deadline) as flood:
        assert len(flood) == FLOOD
        took = [served_in_time(daemon, "/creds/dev") for _ in range(5)]
        assert max(took) < 1.0
        with open_sockets(daemon.port, 200, first_bytes, deadline):  # more arrive meanwhile
            assert served_in_time(daemon, "/creds/dev") < 1.0
    assert served_in_time(daemon, "/healthz") < 1.0
    grown = daemon.output()[before:]
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


def test_incomplete_request_is_closed_after_the_request_timeout(start_daemon, aws_home: AwsHome) -> None:  # type: ignore[no-untyped-def]
    """Slow loris: the deadline covers the whole request, not the time between bytes."""
    daemon = start_daemon()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer = b""
        for _ in range(30):  # one header line a second would keep it open forever without a deadline
            time.sleep(0.5)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        with contextlib.suppress(OSError):
            answer = sock.recv(65536)
    assert time.monotonic() - start < 14.0
    if answer:
        status, body = json_error(answer)
        assert (status, body["code"]) == (408, "RequestTimeout")


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
    assert r"x\x0d\x0a2031-01-01T00:00:00Z ERROR forged line\x1b[31mred\u202e" in output


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
