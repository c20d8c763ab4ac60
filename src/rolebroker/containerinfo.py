"""Which container is behind an address: the name, image and id the audit log records.

A request on the container listener carries only its source address. Docker and rootful
Podman know which running container holds that address: ``GET /containers/json`` on their
API socket (Podman speaks Docker's API) lists every running container with the addresses
of its networks. This module asks them, from the audit writer thread (audit.py), never from
the request path, and records only what names a container (name, image, short id, engine):
never anything else the answer holds (command lines, labels; a container's environment,
which may hold its grant, is not in this answer and is never asked for).

The name is informative, never trusted: containers on one bridge can spoof each other's
source address, so a line may name the container whose address was borrowed.

Bounded everything, because the engine is another program, possibly slow or hostile:

- one call takes at most ``TIMEOUT`` seconds in all (connect, headers and body: a server
  that drips one byte at a time hits the deadline too), and reads at most ``MAX_BODY``
  bytes; anything else is an unusable answer, and that engine is left alone for
  ``RETRY_FAILED`` seconds;
- at most one round of list calls per ``MIN_INTERVAL``, however many lookups: a flood of
  container requests is never a flood of API calls;
- a listing names containers for ``FRESH`` seconds (addresses are reused: an old listing
  must not name the wrong container for long); an address missing from a listing made
  after its request is "no container" (``None``) for ``NEGATIVE_TTL`` seconds, with at most
  ``MAX_NEGATIVE`` such addresses kept;
- a socket this user cannot open (missing, permission denied, nobody listening) means no
  names: said once in the log with what to do, never an error per request, tried again
  after ``RETRY_UNAVAILABLE`` seconds.

Standard library only (http.client over an AF_UNIX socket): the daemon gains no dependency.
"""

from __future__ import annotations

import enum
import errno
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"
"""Rootful Podman's API socket (``podman.socket``). Rootless Podman's containers never reach
the container listener (README, Containers), so its per-user socket is not asked."""

TIMEOUT = 0.5
"""Seconds one list call may take in all, connect to last byte."""
MAX_BODY = 4 << 20
"""Bytes of one answer read at most (a few thousand containers); a longer one is refused."""
MAX_CONTAINERS = 10_000
"""Containers of one answer looked at, at most."""
MIN_INTERVAL = 1.0
"""Seconds between two rounds of list calls, at least."""
FRESH = 5.0
"""Seconds a listing names containers (an address can pass to another container)."""
NEGATIVE_TTL = 30.0
"""Seconds an address that no container held stays 'no container' without a new call."""
MAX_NEGATIVE = 1024
RETRY_FAILED = 30.0
"""Seconds an engine that answered badly (timeout, garbage, too long) is left alone."""
RETRY_UNAVAILABLE = 60.0
"""Seconds before a socket that could not be opened is tried again (the engine may start)."""
_NAME_CHARS = 128
_IMAGE_CHARS = 256
_HEX = re.compile(r"^[0-9a-f]{12,64}$")
_UNAVAILABLE = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.ECONNREFUSED,
    errno.ENOTSOCK,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
}


class Unknown(enum.Enum):
    """No answer to go by: the lookup is off, no socket can be opened, or the engines failed."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What the audit log records of a container: never its command, labels or environment."""

    name: str
    image: str
    id: str
    """The short id (12 hex digits), as ``docker ps`` shows it."""
    engine: str
    """``docker`` or ``podman`` (Podman marks its answers with ``Libpod-API-Version``)."""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "image": self.image, "id": self.id, "engine": self.engine}


Lookup = Callable[[str, float], "ContainerInfo | Unknown | None"]
"""``(source address, request time) -> the container, None (no container holds it), or UNKNOWN``."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One engine API socket."""

    path: str
    origin: str
    """Where the path came from (``DOCKER_HOST``, ``default``...), for log lines."""


def endpoints_from_environ(environ: Mapping[str, str]) -> tuple[list[Endpoint], list[str]]:
    """The sockets to ask, and notes on settings that were not used: Docker's
    (``DOCKER_HOST=unix://PATH``, else /var/run/docker.sock) and rootful Podman's
    (``CONTAINER_HOST=unix://PATH``, else /run/podman/podman.sock). A ``tcp://`` or
    ``ssh://`` host is not asked: the lookup stays on this machine, over a Unix socket."""
    endpoints: list[Endpoint] = []
    notes: list[str] = []
    for variable, default in (("DOCKER_HOST", DOCKER_SOCKET), ("CONTAINER_HOST", PODMAN_SOCKET)):
        value = environ.get(variable, "").strip()
        if not value:
            endpoints.append(Endpoint(default, "default"))
        elif value.startswith("unix://") and len(value) > len("unix://"):
            endpoints.append(Endpoint(value[len("unix://") :], variable))
        else:
            scheme = value.split("://", 1)[0] if "://" in value else value[:20]
            notes.append(f"{variable} is not a unix:// socket ({scheme}): not asked")
    return endpoints, notes


# -- one list call ---------------------------------------------------------------------------


class ApiUnavailable(Exception):
    """The socket cannot be opened by this user (missing, permission, nobody listening)."""


class ApiFailed(Exception):
    """The engine answered, but not usefully (status, timeout, too long, not the JSON shape)."""


class _DeadlineSocket(socket.socket):
    """A socket whose every wait ends by one deadline: a per-read timeout alone lets a
    server that sends a byte now and then hold the caller forever."""

    deadline = 0.0

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the engine's answer took too long")
        return left

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(self._left())
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.settimeout(self._left())
        super().sendall(data, flags)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, deadline: float) -> None:
        super().__init__("localhost", timeout=max(0.001, deadline - time.monotonic()))
        self._path = path
        self._deadline = deadline

    def connect(self) -> None:
        sock = _DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.deadline = self._deadline
        try:
            sock.settimeout(sock._left())
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class Listing:
    """One engine's answer: every running container by address."""

    engine: str
    containers: dict[str, ContainerInfo | None]
    """Address -> container; None for an address two containers claim (named neither)."""


def list_containers(path: str, *, timeout: float = TIMEOUT, max_body: int = MAX_BODY) -> Listing:
    """``GET /containers/json`` on the socket at ``path``. ApiUnavailable when it cannot be
    opened, ApiFailed for any answer that is not a usable listing."""
    deadline = time.monotonic() + timeout
    connection = _UnixConnection(path, deadline)
    try:
        try:
            connection.connect()
        except OSError as exc:
            if exc.errno in _UNAVAILABLE:
                raise ApiUnavailable(exc.strerror or type(exc).__name__) from None
            raise ApiFailed(_why(exc)) from None
        connection.request("GET", "/containers/json", headers={"Accept": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise ApiFailed(f"HTTP {response.status}")
        engine = "podman" if response.getheader("Libpod-API-Version") else "docker"
        body = response.read(max_body + 1)
        if len(body) > max_body:
            raise ApiFailed(f"an answer longer than {max_body} bytes")
    except (OSError, http.client.HTTPException) as exc:
        raise ApiFailed(_why(exc)) from None
    finally:
        connection.close()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiFailed("an answer that is not JSON") from None
    if not isinstance(data, list):
        raise ApiFailed("an answer that is not a list of containers")
    return Listing(engine, parse_containers(data, engine))


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def parse_containers(items: Sequence[object], engine: str) -> dict[str, ContainerInfo | None]:
    """Address -> container from a ``/containers/json`` answer. Only the name, image, id and
    addresses are read; anything of an unexpected type is skipped, never trusted."""
    found: dict[str, ContainerInfo | None] = {}
    for item in items[:MAX_CONTAINERS]:
        if not isinstance(item, dict):
            continue
        info = _container(item, engine)
        if info is None:
            continue
        for address in _addresses(item):
            if address in found and found[address] != info:
                found[address] = None  # two containers claim it: name neither
            else:
                found[address] = info
    return found


def _container(item: dict[str, Any], engine: str) -> ContainerInfo | None:
    ident = item.get("Id")
    if not isinstance(ident, str) or not _HEX.match(ident):
        return None
    names = item.get("Names")
    name = ""
    if isinstance(names, list):
        plain = [n.lstrip("/") for n in names if isinstance(n, str) and n.strip("/")]
        # Legacy links add "/other/alias" names: the container's own has no inner "/".
        name = next((n for n in plain if "/" not in n), plain[0] if plain else "")
    image = item.get("Image")
    return ContainerInfo(
        name=name[:_NAME_CHARS],
        image=image[:_IMAGE_CHARS] if isinstance(image, str) else "",
        id=ident[:12],
        engine=engine,
    )


def _addresses(item: dict[str, Any]) -> set[str]:
    settings = item.get("NetworkSettings")
    networks = settings.get("Networks") if isinstance(settings, dict) else None
    if not isinstance(networks, dict):
        return set()
    found = set()
    for network in networks.values():
        if not isinstance(network, dict):
            continue
        for key in ("IPAddress", "GlobalIPv6Address"):
            address = normal_address(network.get(key))
            if address is not None:
                found.add(address)
    return found


def normal_address(value: object) -> str | None:
    """One spelling per address (IPv6 compressed, IPv4-mapped as IPv4), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return None
    return str(address)


# -- the cache -------------------------------------------------------------------------------


@dataclass(slots=True)
class _EngineState:
    endpoint: Endpoint
    retry_at: float = 0.0
    problem: str | None = None


@dataclass(slots=True)
class _Snapshot:
    listed_at: float
    containers: dict[str, ContainerInfo | None] = field(default_factory=dict)


Lister = Callable[[str], Listing]


class ContainerNames:
    """Address -> container, from the engines' listings, cached and rate-limited (see the
    module docstring). Called from the audit writer thread; a lock keeps it correct (and
    one round at a time) if more threads ever call it."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        clock: Callable[[], float] = time.time,
        lister: Lister | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self._engines = [_EngineState(e) for e in endpoints]
        self._clock = clock
        """The audit log's clock: a lookup compares a listing's time with the request's."""
        self._list = lister or list_containers
        self._notes = list(notes)
        self._snapshot: _Snapshot | None = None
        self._negative: dict[str, float] = {}
        self._last_round: float | None = None
        self._said: str | None = None
        self._lock = threading.Lock()
        self.list_calls = 0
        """List calls made (for tests and /status-like figures)."""

    def lookup(self, source: str, at: float) -> ContainerInfo | Unknown | None:
        """The container at ``source`` for a request made at ``at``: its info, None when the
        engines' listing shows no container there, UNKNOWN when there is no listing to go by."""
        address = normal_address(source)
        if address is None or not self._engines:
            return UNKNOWN
        with self._lock:
            now = self._clock()
            snapshot = self._fresh(now)
            if snapshot is not None and address in snapshot.containers:
                return snapshot.containers[address] or UNKNOWN  # None: claimed twice, name neither
            if self._negative.get(address, 0.0) > now:
                return None
            if snapshot is None or snapshot.listed_at < at:  # no listing made since the request
                if self._last_round is not None and 0 <= now - self._last_round < MIN_INTERVAL:
                    return UNKNOWN  # one round per interval, however many lookups
                self._round(now)
                snapshot = self._fresh(now)
                if snapshot is None:
                    return UNKNOWN
                if address in snapshot.containers:
                    return snapshot.containers[address] or UNKNOWN
            # A listing made after the request has no container there: remember that.
            self._miss(address, now)
            return None

    def _fresh(self, now: float) -> _Snapshot | None:
        snapshot = self._snapshot
        if snapshot is None or not 0 <= now - snapshot.listed_at < FRESH:
            return None
        return snapshot

    def _miss(self, address: str, now: float) -> None:
        if len(self._negative) >= MAX_NEGATIVE:
            self._negative = {a: t for a, t in self._negative.items() if t > now}
            if len(self._negative) >= MAX_NEGATIVE:
                self._negative.clear()
        self._negative[address] = now + NEGATIVE_TTL

    def _round(self, now: float) -> None:
        """One list call per engine that is due; the answers replace the snapshot."""
        self._last_round = now
        merged: dict[str, ContainerInfo | None] = {}
        answered = False
        for engine in self._engines:
            if engine.retry_at > now:
                continue
            self.list_calls += 1
            try:
                listing = self._list(engine.endpoint.path)
            except ApiUnavailable as exc:
                engine.problem, engine.retry_at = f"unavailable: {exc}", now + RETRY_UNAVAILABLE
                continue
            except ApiFailed as exc:
                engine.problem, engine.retry_at = f"failed: {exc}", now + RETRY_FAILED
                continue
            except Exception as exc:  # never the audit writer's end
                engine.problem, engine.retry_at = f"failed: {type(exc).__name__}", now + RETRY_FAILED
                continue
            engine.problem, engine.retry_at, answered = None, 0.0, True
            for address, info in listing.containers.items():
                merged[address] = None if address in merged and merged[address] != info else info
        if answered:
            self._snapshot = _Snapshot(now, merged)
            self._negative = {a: t for a, t in self._negative.items() if a not in merged}
        self._say()

    def _say(self) -> None:
        """One log line per change of state, never one per request."""
        working = [e for e in self._engines if e.problem is None and e.retry_at == 0.0]
        failed = [e for e in self._engines if e.problem is not None and e.problem.startswith("failed")]
        level = logging.INFO
        if failed:
            level = logging.WARNING
            message = (
                "audit: container names: "
                + "; ".join(f"{e.endpoint.path} {e.problem}" for e in failed)
                + f" (asked again in {RETRY_FAILED:.0f} s; lines name no container meanwhile)"
            )
        elif working:
            message = "audit: container names from " + ", ".join(e.endpoint.path for e in working)
        else:
            tried = "; ".join(f"{e.endpoint.path} ({e.endpoint.origin}): {e.problem}" for e in self._engines)
            message = (
                "audit: container lines name the source address only: no Docker or Podman API "
                f"socket this user can open ({tried}). For names, run the daemon as a user who "
                "can read the socket (the docker group can; it is root-equivalent) or point "
                "DOCKER_HOST=unix://PATH at one; container_names = false stops asking"
            )
        if self._notes:
            message += " [" + "; ".join(self._notes) + "]"
        if message != self._said:
            self._said = message
            log.log(level, "%s", message)


def container_names(environ: Mapping[str, str] | None = None) -> ContainerNames:
    """The daemon's lookup, with the sockets its environment names."""
    endpoints, notes = endpoints_from_environ(os.environ if environ is None else environ)
    return ContainerNames(endpoints, notes=notes)
