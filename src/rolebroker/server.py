"""The HTTP face of the broker: the ECS container-credentials contract, plus status."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rolebroker.access import MASTER, Access, Caller, Principal, Route, route_of
from rolebroker.audit import AuditLog
from rolebroker.authtoken import TokenStore, listener_proof, parse_nonce
from rolebroker.broker import Broker
from rolebroker.callers import caller_of
from rolebroker.connections import quiet_loop_errors
from rolebroker.errors import (
    BadRequest,
    BrokerError,
    ConfigFileError,
    ForbiddenHost,
    GrantNotFound,
    InternalError,
    InvalidGrantRequest,
    InvalidMfaCode,
    InvalidNonce,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProfileNotFound,
    TokenRotateFailed,
)
from rolebroker.grants import Grant, GrantStore
from rolebroker.httpdate import HttpDate, dated
from rolebroker.limits import MAX_BODY_BYTES
from rolebroker.logs import LogThrottle
from rolebroker.mfacode import valid_code
from rolebroker.statusdoc import StatusDoc

log = logging.getLogger("rolebroker")

ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
NO_STORE = {"Cache-Control": "no-store"}


def host_allowed(host_header: str | None) -> bool:
    """DNS-rebinding defence: a browser page on evil.example resolving to 127.0.0.1 still
    sends ``Host: evil.example``."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else rest
    else:
        name, _, port = host.partition(":")
    return name in ALLOWED_HOSTS and (port == "" or port.isdigit())


@dataclass(slots=True)
class RequestContext:
    """What the Guard learnt about one request, for the route and the audit line. Shared by
    reference through the ASGI scope (``scope[REQUEST_KEY]``)."""

    principal: Principal = MASTER
    profile: str | None = None
    error: BrokerError | None = None


REQUEST_KEY = "rolebroker.request"


def context_of(request: Request) -> RequestContext:
    found = request.scope.get(REQUEST_KEY)
    return found if isinstance(found, RequestContext) else RequestContext()


class Guard:
    """Host check, caller check, token or grant check and body limit before any routing, as a
    plain ASGI layer so that the warm path pays for no dependency injection. Refusals are
    logged once per kind and minute: a flood of bad requests leaves a few lines, not one per
    request. Every credential request, served or refused, gets one audit line."""

    def __init__(
        self,
        app: ASGIApp,
        access: Access,
        refusals: LogThrottle,
        *,
        default_profile: Callable[[], str] = lambda: "default",
        warm: Callable[[str], bytes | None] | None = None,
        role_arn: Callable[[str], str | None] = lambda _profile: None,
        date: Callable[[], bytes] | None = None,
    ) -> None:
        self._app = app
        self._access = access
        self._refusals = refusals
        self._default_profile = default_profile
        self._warm = warm
        """Profile to pre-serialised warm credentials, or None: the fast path of GET /creds."""
        self._role_arn = role_arn
        self._date = date or HttpDate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = scan_headers(scope)
        hosts, authorization, length, agent = (
            headers.hosts,
            headers.authorization,
            headers.length,
            headers.agent,
        )
        chunked = headers.chunked
        path: str = scope["path"]
        route = route_of(path)
        body_pending = chunked or (length is not None and length != b"0")
        error = _host_refusal(hosts) or _oversized(length)
        if error is not None:
            await self._refuse(send, scope, error, body_pending)
            return
        context = RequestContext()
        caller = lookup = None
        if path != "/healthz":
            lookup = caller_of(scope)
            if lookup is not None:
                if route is Route.CREDS:
                    lookup.with_process(self._access.lookups())  # in parallel with the uid
                caller = await lookup.get()
                if route is Route.CREDS:
                    await self._access.await_process(lookup)
                    caller = await lookup.get()
            try:
                self._access.check_user(caller)
                if route is not Route.OPEN:
                    context.principal = self._access.authenticate(authorization, route, caller)
                if route is Route.CREDS:
                    context.profile = self._access.profile_for(
                        path, context.principal, self._default_profile()
                    )
                    self._access.check_scope(context.principal, context.profile)
            except BrokerError as refusal:
                if route is Route.CREDS:
                    shown = context.profile or (path[7:] if path.startswith("/creds/") else path)
                    self._access.refused(
                        shown, refusal.code, refusal.status, context.principal, (lookup, caller), agent
                    )
                await self._refuse(send, scope, refusal, body_pending)
                return
        if chunked or length:
            receive = _limited(receive, MAX_BODY_BYTES)
        elif self._warm is not None and context.profile is not None and scope["method"] == "GET":
            body = self._warm(context.profile)
            if body is not None:
                await send_credentials(send, body, self._date())
                self._served(context, (lookup, caller), agent)
                return
        scope[REQUEST_KEY] = context
        if context.profile is None:
            await self._app(scope, receive, self._dated(send))
            return
        status = 0

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, self._dated(observed))
        finally:
            if status == 0:
                pass  # the client left before any answer
            elif status == 200:
                self._served(context, (lookup, caller), agent)
            else:
                outcome = context.error.code if context.error is not None else f"HTTP{status}"
                self._access.refused(
                    context.profile, outcome, status, context.principal, (lookup, caller), agent
                )

    def _served(self, context: RequestContext, caller: Caller, agent: str | None) -> None:
        profile = context.profile or ""
        self._access.served(profile, context.principal, caller, agent, self._role_arn(profile))

    async def _refuse(self, send: Send, scope: Scope, error: BrokerError, body_pending: bool) -> None:
        self._refusals.log(
            logging.WARNING,
            error.code,
            "refused %s %r code=%s",
            scope["method"],
            scope["path"][:100],
            error.code,
        )
        await send_error(self._dated(send), error, close=body_pending)

    def _dated(self, send: Send) -> Send:
        """Every response carries a Date header (uvicorn's own is off: daemon.py)."""
        return dated(send, self._date)


def _host_refusal(hosts: list[str]) -> BrokerError | None:
    if len(hosts) > 1:
        return ForbiddenHost("send exactly one Host header: 127.0.0.1, localhost or [::1]")
    if not host_allowed(hosts[0] if hosts else None):
        return ForbiddenHost("requests must use Host 127.0.0.1, localhost or [::1]")
    return None


@dataclass(slots=True)
class RequestHeaders:
    """What the guards of both listeners read from a request's headers, in one pass."""

    hosts: list[str] = field(default_factory=list)
    """Every Host header: more than one is refused (which one counts would be ambiguous)."""
    authorization: str | None = None
    length: bytes | None = None
    chunked: bool = False
    agent: str | None = None


def scan_headers(scope: Scope) -> RequestHeaders:
    found = RequestHeaders()
    for name, value in scope["headers"]:
        if name == b"host":
            found.hosts.append(value.decode("latin-1"))
        elif name == b"authorization":
            found.authorization = value.decode("latin-1")
        elif name == b"content-length":
            found.length = value
        elif name == b"transfer-encoding":
            found.chunked = True
        elif name == b"user-agent":
            found.agent = value.decode("latin-1")
    return found


async def send_credentials(send: Send, body: bytes, date: bytes) -> None:
    """A 200 with serialised credentials, without routing: the headers JSONResponse would send
    (the loopback fast path and the container listener)."""
    headers = [
        (b"date", date),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _oversized(length: bytes | None) -> BrokerError | None:
    """Content-Length is checked before a byte of the body is read."""
    if length is not None and (not length.isdigit() or len(length) > 12 or int(length) > MAX_BODY_BYTES):
        return PayloadTooLarge(f"request bodies are at most {MAX_BODY_BYTES} bytes")
    return None


def _limited(receive: Receive, limit: int) -> Receive:
    """Counts streamed (chunked) body bytes: past ``limit`` the handler gets PayloadTooLarge."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"request bodies are at most {limit} bytes")
        return message

    return counted


async def send_error(send: Send, error: BrokerError, *, close: bool = False) -> None:
    body = json.dumps(error.to_json(), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    if close and b"connection" not in dict(headers):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def code_from_body(raw: bytes) -> str:
    """The code of a ``POST /mfa/{profile}`` body ``{"code": "123456"}``; never echoed back."""
    try:
        body = json.loads(raw) if len(raw) <= 1024 else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: `[[[[...` nested deep
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str) or not valid_code(code):
        raise InvalidMfaCode('send {"code": "123456"}: an MFA code is 6 digits; run: rolebroker mfa PROFILE')
    return code


def create_app(
    broker: Broker,
    token: TokenStore,
    *,
    grants: GrantStore | None = None,
    audit: AuditLog | None = None,
    caller_identity: str = "unavailable",
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """``grants`` and ``audit`` are the daemon's one GrantStore and AuditLog (daemon.py owns
    their lifecycle through ``on_startup``/``on_shutdown``); without ``grants`` only the
    master token is accepted and the grant routes answer NotFound."""
    refusals = LogThrottle(log)
    access = Access(
        token,
        grants,
        audit,
        same_user_without_token=lambda: broker.settings.same_user_without_token,
        identity=caller_identity,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        quiet_loop_errors(asyncio.get_running_loop())
        await broker.start()
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            await broker.stop()
            await access.aclose()
            if on_shutdown is not None:
                await on_shutdown()

    app = FastAPI(
        title="rolebroker",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/proof")
    async def proof(request: Request) -> Response:
        """Open route: shows that this listener knows the token without anyone sending it.
        One fixed-size nonce in, one HMAC out; the address is the one this connection
        arrived on, so a relayed answer does not match the port the client asked."""
        nonce = parse_nonce(request.query_params.get("nonce"))
        server = request.scope.get("server")
        if nonce is None or not server:
            raise InvalidNonce("send ?nonce= with 64 lowercase hex digits (32 random bytes)")
        answer = listener_proof(token.current, nonce, str(server[0]), int(server[1]))
        return JSONResponse({"proof": answer}, headers=NO_STORE)

    @app.post("/token/rotate")
    async def rotate_token() -> Response:
        """A new token, written to the token file; the old one is refused from now on."""
        try:
            await asyncio.to_thread(token.rotate)
        except OSError as exc:
            raise TokenRotateFailed(
                f"cannot write the token file {token.path} ({exc.strerror}); the old token stays valid"
            ) from None
        log.info("token rotated; the old token is refused from now on")
        return JSONResponse({"rotated": True, "token_file": str(token.path)}, headers=NO_STORE)

    @app.get("/creds")
    async def default_creds(request: Request) -> Response:
        return await _serve(context_of(request).profile or broker.settings.default_profile)

    # Path parameters are read from the request, not declared (``profile: str``): a declared
    # one makes FastAPI build a pydantic field for it, which imports pydantic.v1 to rule out a
    # v1 model: 30 ms of every start for a string the route uses as it is.
    @app.get("/creds/{profile}")
    async def profile_creds(request: Request) -> Response:
        return await _serve(request.path_params["profile"])

    async def _serve(profile: str) -> Response:
        credentials = await broker.credentials(profile)
        return JSONResponse(credentials.to_ecs_json(), headers=NO_STORE)

    @app.get("/status")
    async def status() -> Response:
        return JSONResponse(_with_access(broker.status(), access).to_json(), headers=NO_STORE)

    if grants is not None:
        _grant_routes(app, broker, grants)

    @app.post("/reload")
    async def reload() -> Response:
        if not await broker.reload(reason="POST /reload"):
            error = broker.config_error() or ConfigFileError("reload failed; see the daemon log")
            return _error_response(error)
        return JSONResponse({"reloaded": True, "profiles": broker.profile_count()})

    @app.post("/mfa/{profile}")
    async def mfa(request: Request) -> Response:
        """The hand-off of ``rolebroker mfa``: body ``{"code": "123456"}``, token required."""
        code = code_from_body(await request.body())
        profile = request.path_params["profile"]
        return JSONResponse(await broker.submit_mfa(profile, code), headers=NO_STORE)

    @app.exception_handler(BrokerError)
    async def broker_error(request: Request, exc: BrokerError) -> Response:
        context_of(request).error = exc
        if isinstance(exc, ProfileNotFound):
            name = str(request.path_params.get("profile", request.url.path))
            refusals.log(logging.WARNING, exc.code, "refused request code=%s profile=%r", exc.code, name[:80])
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return _error_response(_routing_error(exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return _error_response(BadRequest("malformed request"))

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, _exc: ClientDisconnect) -> Response:
        """A client that gives up mid-upload is not the daemon's error."""
        log.debug("client left before its request arrived whole: %s %s", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
        return _error_response(InternalError("internal error; see the daemon log"))

    def warm(profile: str) -> bytes | None:
        """GET /creds/{profile} and GET /creds when the answer is warm; None sends the
        request through FastAPI, so every other case (and every error) keeps one path."""
        if profile and "/" not in profile:
            return broker.warm_body(profile)
        return None

    def role_arn(profile: str) -> str | None:
        try:
            return getattr(broker.hop(profile), "role_arn", None)
        except BrokerError:
            return None

    return Guard(
        app,
        access,
        refusals,
        default_profile=lambda: broker.settings.default_profile,
        warm=warm,
        role_arn=role_arn,
    )


def _with_access(doc: StatusDoc, access: Access) -> StatusDoc:
    """The status document with what the Guard knows: files, caller identity, last callers."""
    return replace(
        doc,
        audit_file=str(access.audit.path) if access.audit is not None else None,
        grants_file=str(access.grants.path) if access.grants is not None else None,
        caller_identity=access.identity,
        profiles=tuple(replace(row, last_caller=access.last_callers.get(row.name)) for row in doc.profiles),
    )


def _grant_routes(app: FastAPI, broker: Broker, grants: GrantStore) -> None:
    """POST/GET /grants, POST /grants/revoke (master token only) and GET /grants/self."""

    @app.post("/grants")
    async def create_grant(request: Request) -> Response:
        profiles, ttl, name = _grant_request(await request.body())
        for profile in profiles:
            _known_profile(broker, profile)
        grant, secret = await asyncio.to_thread(grants.create, profiles, ttl, name)
        log.info("grant %r created for %s", grant.name, ", ".join(grant.profiles))
        body = {**_grant_json(grant, None, now=grants.now()), "grant": secret}
        body.pop("last_used", None)
        body.pop("state", None)
        return JSONResponse(body, status_code=201, headers=NO_STORE)

    @app.get("/grants")
    async def list_grants() -> Response:
        now = grants.now()
        rows = [_grant_json(grant, used, now=now) for grant, used in grants.list()]
        return JSONResponse({"grants": rows}, headers=NO_STORE)

    @app.post("/grants/revoke")
    async def revoke_grants(request: Request) -> Response:
        body = _json_object(await request.body())
        if body.get("all") is True:
            live = [g.name for g, _ in grants.list() if not g.revoked]
            await asyncio.to_thread(grants.revoke_all)
            log.info("every grant revoked (%d)", len(live))
            return JSONResponse({"revoked": live}, headers=NO_STORE)
        name = body.get("name")
        if not isinstance(name, str) or not name or len(name) > 128:
            raise InvalidGrantRequest('send {"name": "NAME"} (a name or id) or {"all": true}')
        hits = await asyncio.to_thread(grants.revoke, name)
        if not hits:
            if any(name in (g.id, g.name) for g, _ in grants.list()):
                return JSONResponse({"revoked": []}, headers=NO_STORE)  # already revoked
            raise GrantNotFound(f"no grant is named {name[:64]!r}; list them: rolebroker grants")
        log.info("grant(s) revoked: %s", ", ".join(g.name for g in hits))
        return JSONResponse({"revoked": [g.name for g in hits]}, headers=NO_STORE)

    @app.get("/grants/self")
    async def grant_self(request: Request) -> Response:
        principal = context_of(request).principal
        if principal.grant is None:
            return JSONResponse({"master": True}, headers=NO_STORE)
        used = dict((g.id, u) for g, u in grants.list()).get(principal.grant.id)
        return JSONResponse(_grant_json(principal.grant, used, now=grants.now()), headers=NO_STORE)


def _known_profile(broker: Broker, profile: str) -> None:
    """ProfileNotFound for a name the AWS config lacks; a profile that exists but fails to
    resolve may still get a grant (fixing the config then makes it work)."""
    try:
        broker.hop(profile)
    except ProfileNotFound:
        raise
    except BrokerError:
        pass


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise InvalidGrantRequest("send a JSON object")
    return body


def _grant_request(raw: bytes) -> tuple[list[str], float | None, str | None]:
    body = _json_object(raw)
    profiles, ttl, name = body.get("profiles"), body.get("ttl_seconds"), body.get("name")
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        raise InvalidGrantRequest(
            'send {"profiles": ["PROFILE", ...], "ttl_seconds": N or null, "name": ...}'
        )
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise InvalidGrantRequest("ttl_seconds is a number of seconds, or null for no expiry")
    if name is not None and not isinstance(name, str):
        raise InvalidGrantRequest("name is a string, or null for a generated one")
    return profiles, None if ttl is None else float(ttl), name


def _grant_json(grant: Grant, last_used: float | None, *, now: float) -> dict[str, Any]:
    """A grant's metadata as the API shows it: never its string."""
    full = grant.to_json(last_used)
    state = "revoked" if grant.revoked else "expired" if grant.expired(now) else "active"
    return {
        "name": full["name"],
        "id": full["id"],
        "profiles": full["profiles"],
        "created_at": full["created_at"],
        "expires_at": full["expires_at"],
        "last_used": full["last_used"],
        "state": state,
    }


def _error_response(error: BrokerError) -> Response:
    return JSONResponse(error.to_json(), status_code=error.status, headers=error.headers())


def _routing_error(status: int) -> BrokerError:
    """What the router refuses (no such path, wrong method), in the catalogue's terms."""
    if status == 405:
        return MethodNotAllowed(
            "method not allowed here (credentials: GET /creds/PROFILE, MFA codes: POST /mfa/PROFILE)"
        )
    if status == 404:
        return NotFound(
            "no such endpoint; credentials are at GET /creds/PROFILE (see also /status, /healthz)"
        )
    return BadRequest(f"the request was refused (HTTP {status}); credentials are at GET /creds/PROFILE")
