"""The container listener: credentials for local Docker/Podman containers at 169.254.170.2.

A separate socket with its own small ASGI app and its own policy, served on the daemon's
event loop and sharing its Broker, GrantStore and AuditLog. Containers are less trusted than
the user's own processes, so this app is deliberately narrow:

- only credential routes: ``GET /creds/{profile}``, ``GET /creds`` (the grant's first
  profile) and ``GET /v2/credentials/{grant}`` (for AWS_CONTAINER_CREDENTIALS_RELATIVE_URI:
  the grant string in the path is the secret). No /status, /reload, /mfa, /grants, /proof;
- only grants: the master token is refused (MasterTokenOnContainerListener), so a container
  never holds anything that opens the loopback endpoint or the admin routes;
- ``Host: 169.254.170.2`` (optionally ``:80``, what SDKs send through the DNAT);
- a source address that is private and not loopback: a request that arrived on this
  listener from 127.0.0.0/8 is a local process that should use the loopback endpoint.

Containers on one bridge can spoof each other's source address, so the address is recorded
(audit ``source``) but never authorises anything: the grant does.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from rolebroker.audit import AuditLog
from rolebroker.authtoken import TokenStore
from rolebroker.broker import Broker
from rolebroker.errors import (
    BrokerError,
    ForbiddenHost,
    ForbiddenSource,
    InternalError,
    MasterTokenOnContainerListener,
    MethodNotAllowed,
    MissingToken,
    NotFound,
)
from rolebroker.grantcode import looks_like_grant
from rolebroker.grants import Grant, GrantStore
from rolebroker.httpdate import HttpDate, dated
from rolebroker.logs import LogThrottle
from rolebroker.server import scan_headers, send_credentials, send_error
from rolebroker.textsafe import escape

log = logging.getLogger("rolebroker")

ADDRESS = "169.254.170.2"
"""The ECS credentials address (the same as cli.containers_setup.ADDRESS)."""
ALLOWED_HOSTS = frozenset({ADDRESS, f"{ADDRESS}:80"})
RELATIVE_PREFIX = "/v2/credentials/"
SETUP_HINT = "rolebroker containers setup --apply"
_NEED_GRANT = (
    "give the container a grant: rolebroker docker-env PROFILE, or rolebroker docker run PROFILE -- ..."
)


def source_allowed(host: str | None) -> bool:
    """A private, non-loopback IPv4 or IPv6 address (bridges hand out RFC 1918 or ULA ones;
    a host-network container connects from 169.254.170.2 itself, which is link-local)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_private and not address.is_loopback and not address.is_unspecified


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    host: list[str]
    authorization: str | None
    user_agent: str | None
    source: str | None


def _parse(scope: Scope) -> _Request:
    headers = scan_headers(scope)
    client = scope.get("client")
    return _Request(
        scope["method"],
        scope["path"],
        headers.hosts,
        headers.authorization,
        headers.agent,
        str(client[0]) if client else None,
    )


@dataclass(slots=True)
class _Seen:
    """What a request turned out to ask for, as far as it got."""

    profile: str = ""
    grant: Grant | None = None


class ContainerApp:
    """The whole container listener as one plain ASGI callable: every check comes before
    any work, and every answer is the same JSON shape as the loopback endpoint's."""

    def __init__(
        self,
        broker: Broker,
        token: TokenStore,
        grants: GrantStore,
        audit: AuditLog | None,
        *,
        date: Callable[[], bytes] | None = None,
    ) -> None:
        self._broker = broker
        self._token = token
        self._grants = grants
        self._audit = audit
        self._date = date or HttpDate()
        self._refusals = LogThrottle(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # served with lifespan off: the loopback app owns the broker
            return
        request = _parse(scope)
        seen = _Seen()
        try:
            profile, grant = self._admit(request, seen)
            body = self._broker.warm_body(profile)
            if body is None:
                credentials = await self._broker.credentials(profile)
                body = json.dumps(credentials.to_ecs_json(), separators=(",", ":")).encode()
        except BrokerError as error:
            self._refused(request, seen.profile, seen.grant, error)
            await send_error(self._dated(send), error, close=True)
            return
        except Exception as exc:  # never a traceback to a container
            log.error("container listener: internal error: %s", type(exc).__name__, exc_info=exc)
            internal = InternalError("internal error; see the daemon log")
            self._refused(request, seen.profile, seen.grant, internal)
            await send_error(self._dated(send), internal)
            return
        self._grants.touch(grant)
        self._record(request, profile, grant, "OK", 200)
        await send_credentials(send, body, self._date())

    def _admit(self, request: _Request, seen: _Seen) -> tuple[str, Grant]:
        """(profile, grant) for a request this listener serves, else the refusal. The order
        matters: source and Host before anything that looks at a credential. ``seen`` keeps
        what was learnt before a refusal, for its audit line."""
        if not source_allowed(request.source):
            raise ForbiddenSource(
                "the container listener serves local containers only; from this machine use "
                'http://127.0.0.1:PORT/creds/PROFILE (run: eval "$(rolebroker env PROFILE)")'
            )
        if len(request.host) != 1 or request.host[0].strip().lower() not in ALLOWED_HOSTS:
            raise ForbiddenHost(f"requests to the container listener must use Host {ADDRESS}, exactly once")
        relative = request.path.startswith(RELATIVE_PREFIX)
        if not (relative or request.path == "/creds" or request.path.startswith("/creds/")):
            raise NotFound(
                "the container listener serves only GET /creds/PROFILE, GET /creds and "
                "GET /v2/credentials/GRANT; admin routes are on the loopback endpoint only"
            )
        if request.method != "GET":
            raise MethodNotAllowed("the container listener answers GET only")
        if not relative:
            seen.profile = request.path[len("/creds/") :] if request.path != "/creds" else ""
        presented = request.path[len(RELATIVE_PREFIX) :] if relative else request.authorization
        if presented is None:
            raise MissingToken(
                "send the grant in the Authorization header (AWS_CONTAINER_AUTHORIZATION_TOKEN); "
                + _NEED_GRANT
            )
        if not looks_like_grant(presented) and self._token.matches(presented):
            raise MasterTokenOnContainerListener(
                "the container listener does not take the master token (it opens every profile and "
                "the admin routes); " + _NEED_GRANT
            )
        grant = seen.grant = self._grants.verify(presented)  # InvalidToken, GrantExpired, GrantRevoked
        if relative:
            seen.profile = grant.profiles[0]
            return grant.profiles[0], grant
        profile = seen.profile = seen.profile if request.path != "/creds" else grant.profiles[0]
        if not profile or "/" in profile:
            raise NotFound("credentials are at GET /creds/PROFILE")
        self._grants.check_scope(grant, profile)  # GrantScope
        return profile, grant

    def _refused(self, request: _Request, profile: str, grant: Grant | None, error: BrokerError) -> None:
        self._refusals.log(
            logging.WARNING,
            f"container:{error.code}",
            "container listener refused %s from %s code=%s",
            escape(request.path if not request.path.startswith(RELATIVE_PREFIX) else RELATIVE_PREFIX + "...")[
                :100
            ],
            escape(request.source or "?"),
            error.code,
        )
        self._record(request, profile, grant, error.code, error.status)

    def _record(
        self, request: _Request, profile: str, grant: Grant | None, outcome: str, status: int
    ) -> None:
        if self._audit is None:
            return
        self._audit.record(
            profile=profile,
            outcome=outcome,
            status=status,
            grant=grant.name if grant is not None else None,
            user_agent=request.user_agent,
            source=request.source,
        )

    def _dated(self, send: Send) -> Send:
        """Every response carries a Date header (uvicorn's own is off: daemon.py)."""
        return dated(send, self._date)


# -- the socket ------------------------------------------------------------------------------

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def address_present(address: str = ADDRESS) -> bool:
    """Whether this machine holds ``address`` (a plain bind to port 0 tells, without root)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((address, 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ContainerListenError(Exception):
    """The container port cannot be bound (taken); the daemon goes on serving loopback."""


def open_container_listener(port: int, *, freebind: bool, address: str = ADDRESS) -> socket.socket | None:
    """The listening socket on address:port, or None when the address is missing and
    ``freebind`` is off. With ``freebind`` (IP_FREEBIND, Linux) the socket is bound even
    before the address exists, and starts receiving as soon as the set-up adds it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if freebind:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            return None
        raise ContainerListenError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
