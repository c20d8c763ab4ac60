"""A small HTTP proxy in front of moto that lets tests count, slow down, break and
shorten STS: the same botocore requests, the same moto answers, with faults on demand.

Modes (``set(mode=...)``):
  ok           forward to moto
  unavailable  503 ServiceUnavailable XML          deny       403 AccessDenied XML
  throttle     400 Throttling XML                  reset      close the connection
  hang         accept, answer nothing until ``release()`` (then forward)
  echo         400 error whose message echoes the Authorization and security-token headers
  malformed    200 with broken XML                 empty      200 with an empty body
``delay`` sleeps before answering; ``expires_in`` rewrites Expiration to now + N s (N may
be negative: already expired)."""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
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
    mode: str = "ok"
    expires_in: int | None = None  # rewrite Expiration to now + N seconds
    calls: list[StsCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)


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
        self.release()
        with self.state.lock:
            self.state.delay, self.state.mode, self.state.expires_in = 0.0, "ok", None
            self.state.calls.clear()

    def release(self) -> None:
        """Let every hanging request go on (to moto) and leave hang mode."""
        with self.state.lock:
            if self.state.mode == "hang":
                self.state.mode = "ok"
            self.state.released.set()

    def set(
        self, *, delay: float | None = None, mode: str | None = None, expires_in: int | str | None = "keep"
    ) -> None:
        with self.state.lock:
            if delay is not None:
                self.state.delay = delay
            if mode is not None:
                self.state.mode = mode
                if mode == "hang":
                    self.state.released = threading.Event()
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
        self.state.released.set()  # no handler thread outlives the proxy
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
                released = state.released
                state.calls.append(StsCall(params.get("Action", "?"), params, time.time()))
            if delay:
                time.sleep(delay)
            if mode == "hang":
                released.wait(120)
                mode = "ok"
            if mode == "reset":
                self.close_connection = True
                self.connection.close()
                return
            canned = self._canned(mode)
            if canned is not None:
                self._reply(canned[0], {"Content-Type": "text/xml"}, canned[1])
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

        def _canned(self, mode: str) -> tuple[int, bytes] | None:
            errors = {
                "unavailable": (503, "ServiceUnavailable", "Service is unavailable"),
                "deny": (403, "AccessDenied", "User is not authorized to perform: sts:AssumeRole"),
                "throttle": (400, "Throttling", "Rate exceeded"),
                "echo": (
                    400,
                    "InvalidRequest",
                    f"Bad request: Authorization={self.headers.get('Authorization', '')} "
                    f"X-Amz-Security-Token: {self.headers.get('X-Amz-Security-Token', '')} "
                    f"token {self.headers.get('X-Amz-Security-Token', '')}",
                ),
            }
            if mode in errors:
                status, code, message = errors[mode]
                return status, (
                    f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                    f"<Code>{code}</Code><Message>{escape(message)}</Message></Error>"
                    "<RequestId>x</RequestId></ErrorResponse>"
                ).encode()
            if mode == "malformed":
                return 200, b"<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>"
            if mode == "empty":
                return 200, b""
            return None

        def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
