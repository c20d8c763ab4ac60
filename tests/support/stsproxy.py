"""A small HTTP proxy in front of moto that lets tests count, slow down, break and
shorten STS: the same botocore requests, the same moto answers, with faults on demand."""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.procs import free_port

_EXPIRATION = re.compile(rb"<Expiration>[^<]+</Expiration>")


@dataclass
class StsCall:
    action: str
    params: dict[str, str]
    at: float


@dataclass
class ProxyState:
    delay: float = 0.0
    mode: str = "ok"  # ok | unavailable (503 XML) | deny (403 AccessDenied) | reset (close connection)
    expires_in: int | None = None  # rewrite Expiration to now + N seconds
    calls: list[StsCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class StsProxy:
    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlparse(upstream)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.state = ProxyState()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadingHTTPServer | None = None
        self.start()

    # -- knobs ---------------------------------------------------------------------------

    def reset(self) -> None:
        with self.state.lock:
            self.state.delay, self.state.mode, self.state.expires_in = 0.0, "ok", None
            self.state.calls.clear()

    def set(
        self, *, delay: float | None = None, mode: str | None = None, expires_in: int | str | None = "keep"
    ) -> None:
        with self.state.lock:
            if delay is not None:
                self.state.delay = delay
            if mode is not None:
                self.state.mode = mode
            if expires_in != "keep":
                self.state.expires_in = expires_in  # type: ignore[assignment]

    def calls(self, action: str | None = None) -> list[StsCall]:
        with self.state.lock:
            return [c for c in self.state.calls if action is None or c.action == action]

    def count(self, action: str | None = None) -> int:
        return len(self.calls(action))

    # -- lifecycle: stop() makes STS unreachable (connection refused), start() brings it back.

    def start(self) -> None:
        if self._server is not None:
            return
        handler = _make_handler(self._upstream, self.state)
        server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="sts-proxy", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _make_handler(upstream: tuple[str, int], state: ProxyState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            self._forward("POST")

        def do_GET(self) -> None:
            self._forward("GET")

        def _forward(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
            with state.lock:
                delay, mode, expires_in = state.delay, state.mode, state.expires_in
                state.calls.append(StsCall(params.get("Action", "?"), params, time.time()))
            if delay:
                time.sleep(delay)
            if mode == "reset":
                self.close_connection = True
                self.connection.close()
                return
            if mode in ("unavailable", "deny"):
                status, code, msg = (
                    (503, "ServiceUnavailable", "Service is unavailable")
                    if mode == "unavailable"
                    else (403, "AccessDenied", "User is not authorized to perform: sts:AssumeRole")
                )
                error = (
                    f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                    f"<Code>{code}</Code><Message>{msg}</Message></Error><RequestId>x</RequestId></ErrorResponse>"
                ).encode()
                self._reply(status, {"Content-Type": "text/xml"}, error)
                return
            connection = http.client.HTTPConnection(*upstream, timeout=30)
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")
            }
            connection.request(method, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            if expires_in is not None:
                stamp = datetime.fromtimestamp(time.time() + expires_in, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                payload = _EXPIRATION.sub(f"<Expiration>{stamp}</Expiration>".encode(), payload)
            keep = {
                k: v for k, v in response.getheaders() if k.lower() in ("content-type", "x-amzn-requestid")
            }
            connection.close()
            self._reply(response.status, keep, payload)

        def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
