"""A fake Docker (or Podman) Engine API on a Unix socket: ``GET /containers/json`` only.

No engine runs on the test machines; this server stands in for one. Containers are
registered with :func:`container` (the shape Docker answers with, networks included) and
can change while it runs. ``mode`` makes it misbehave the ways a slow, broken or hostile
engine could: ``garbage``, ``huge`` (a valid listing padded past any sane size), ``slow``
(answers after ``delay``), ``drip`` (a byte at a time), ``status`` (500).
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

ENV_SECRET = "rbg1.ENVSECRETENVSECRETENV.in-the-container-env-never-logged-0123456789"
"""What a container's environment could hold (its grant): never to appear anywhere."""


def container(
    name: str,
    image: str,
    ident: str,
    networks: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """One ``/containers/json`` item as Docker answers it (trimmed), with a command line and
    labels carrying a secret, which a lookup must never keep."""
    ident = ident.ljust(64, "0")
    return {
        "Id": ident,
        "Names": [f"/{name}"],
        "Image": image,
        "ImageID": "sha256:" + "ab" * 32,
        "Command": f"/entrypoint.sh --token {ENV_SECRET}",
        "Created": 1_764_000_000,
        "Ports": [],
        "Labels": {"com.example.secret": ENV_SECRET},
        "State": "running",
        "Status": "Up 2 minutes",
        "HostConfig": {"NetworkMode": next(iter(networks), "none") if networks else "none"},
        "NetworkSettings": {
            "Networks": {
                net: {
                    "IPAMConfig": None,
                    "Links": None,
                    "Aliases": None,
                    "NetworkID": "n" * 64,
                    "EndpointID": "e" * 64,
                    "Gateway": "",
                    "IPAddress": addresses.get("ipv4", ""),
                    "IPPrefixLen": 16 if addresses.get("ipv4") else 0,
                    "IPv6Gateway": "",
                    "GlobalIPv6Address": addresses.get("ipv6", ""),
                    "GlobalIPv6PrefixLen": 64 if addresses.get("ipv6") else 0,
                    "MacAddress": "02:42:ac:11:00:02",
                }
                for net, addresses in (networks or {}).items()
            }
        },
        "Mounts": [],
    }


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: FakeDocker


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        fake = self.server.fake
        fake.count(self.path)
        if self.path.split("?")[0] != "/containers/json":
            self._send(404, b'{"message":"page not found"}')
            return
        mode = fake.mode
        if mode == "status":
            self._send(500, b'{"message":"server error"}')
        elif mode == "garbage":
            self._send(200, b"\x00not json at all {{{")
        elif mode == "slow":
            fake.stopping.wait(fake.delay)
            self._send(200, fake.body())
        elif mode == "drip":
            body = fake.body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(body)):
                if fake.stopping.wait(fake.delay):
                    return
                with contextlib.suppress(OSError):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
        elif mode == "huge":
            padding = {"Id": "f" * 64, "Names": ["/padding"], "Labels": {"x": "y" * fake.huge}}
            self._send(200, json.dumps([padding, *fake.containers]).encode())
        else:
            self._send(200, fake.body())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.server.fake.podman:
            self.send_header("Libpod-API-Version", "5.2.0")
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet (and a Unix socket's client has no address to print)."""


class FakeDocker:
    """The server; :meth:`running` starts it in a thread and always stops it."""

    def __init__(self, path: Path, containers: list[dict[str, Any]] | None = None, *, podman: bool = False):
        self.path = path
        self.containers = list(containers or [])
        self.podman = podman
        self.mode = "ok"
        self.delay = 2.0
        self.huge = 1 << 20
        self.calls = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def count(self, _path: str) -> None:
        with self._lock:
            self.calls += 1

    def body(self) -> bytes:
        return json.dumps(self.containers).encode()

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeDocker]:
        server = _Server(str(self.path), _Handler)
        server.fake = self
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            server.shutdown()
            server.server_close()
            thread.join(5)
            self.path.unlink(missing_ok=True)
