"""The HTTP face of the broker: the ECS container-credentials contract, plus status."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rolebroker.authtoken import TokenStore, listener_proof, parse_nonce
from rolebroker.broker import Broker
from rolebroker.connections import quiet_loop_errors
from rolebroker.errors import (
    BadRequest,
    BrokerError,
    ConfigFileError,
    ForbiddenHost,
    InternalError,
    InvalidMfaCode,
    InvalidNonce,
    InvalidToken,
    MethodNotAllowed,
    MissingToken,
    NotFound,
    PayloadTooLarge,
    ProfileNotFound,
    TokenRotateFailed,
)
from rolebroker.httpdate import HttpDate
from rolebroker.limits import MAX_BODY_BYTES
from rolebroker.logs import LogThrottle
from rolebroker.mfacode import valid_code

log = logging.getLogger("rolebroker")

OPEN_PATHS = frozenset({"/healthz", "/proof"})
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


class Guard:
    """Host check, token check and body limit before any routing, as a plain ASGI layer so
    that the warm path pays for no dependency injection. Refusals are logged once per kind
    and minute: a flood of bad requests leaves a few lines, not one per request."""

    def __init__(
        self,
        app: ASGIApp,
        token: TokenStore,
        refusals: LogThrottle,
        *,
        warm: Callable[[str], bytes | None] | None = None,
        date: Callable[[], bytes] | None = None,
    ) -> None:
        self._app = app
        self._token = token
        self._refusals = refusals
        self._warm = warm
        """Path to pre-serialised warm credentials, or None: the fast path of GET /creds."""
        self._date = date or HttpDate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        hosts: list[str] = []
        authorization = length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"host":
                hosts.append(value.decode("latin-1"))
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        error = self._refusal(hosts, authorization, scope["path"]) or _oversized(length)
        if error is not None:
            self._refusals.log(
                logging.WARNING,
                error.code,
                "refused %s %r code=%s",
                scope["method"],
                scope["path"][:100],
                error.code,
            )
            body_pending = chunked or (length is not None and length != b"0")
            await send_error(self._dated(send), error, close=body_pending)
            return
        if chunked or length:
            receive = _limited(receive, MAX_BODY_BYTES)
        elif self._warm is not None and scope["method"] == "GET":
            body = self._warm(scope["path"])
            if body is not None:
                await _send_warm(send, body, self._date())
                return
        await self._app(scope, receive, self._dated(send))

    def _dated(self, send: Send) -> Send:
        """Every response carries a Date header (uvicorn's own is off: daemon.py)."""

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(b"date", self._date()), *message.get("headers", ())]
            await send(message)

        return dated

    def _refusal(self, hosts: list[str], authorization: str | None, path: str) -> BrokerError | None:
        if len(hosts) > 1:
            return ForbiddenHost("send exactly one Host header: 127.0.0.1, localhost or [::1]")
        if not host_allowed(hosts[0] if hosts else None):
            return ForbiddenHost("requests must use Host 127.0.0.1, localhost or [::1]")
        if path in OPEN_PATHS:
            return None
        if authorization is None:
            return MissingToken(
                "send the token in the Authorization header; set AWS_CONTAINER_AUTHORIZATION_TOKEN "
                '(run: eval "$(rolebroker env PROFILE)")'
            )
        if self._token.matches(authorization):
            return None
        if authorization[:7].lower() == "bearer ":
            return InvalidToken(
                "the Authorization header carries the raw token, without 'Bearer ': send "
                'Authorization: <token> (run: eval "$(rolebroker env PROFILE)")'
            )
        return InvalidToken(
            "the Authorization header does not match the daemon's token; re-export it "
            '(run: eval "$(rolebroker env PROFILE)")'
        )


async def _send_warm(send: Send, body: bytes, date: bytes) -> None:
    """The warm answer of GET /creds without routing: the headers JSONResponse would send."""
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


def create_app(broker: Broker, token: TokenStore, *, on_startup: Callable[[], None] | None = None) -> ASGIApp:
    refusals = LogThrottle(log)

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
    async def default_creds() -> Response:
        return await _serve(broker.settings.default_profile)

    @app.get("/creds/{profile}")
    async def profile_creds(profile: str) -> Response:
        return await _serve(profile)

    async def _serve(profile: str) -> Response:
        credentials = await broker.credentials(profile)
        return JSONResponse(credentials.to_ecs_json(), headers=NO_STORE)

    @app.get("/status")
    async def status() -> Response:
        return JSONResponse(broker.status().to_json(), headers=NO_STORE)

    @app.post("/reload")
    async def reload() -> Response:
        if not await broker.reload(reason="POST /reload"):
            error = broker.config_error() or ConfigFileError("reload failed; see the daemon log")
            return _error_response(error)
        return JSONResponse({"reloaded": True, "profiles": broker.profile_count()})

    @app.post("/mfa/{profile}")
    async def mfa(profile: str, request: Request) -> Response:
        """The hand-off of ``rolebroker mfa``: body ``{"code": "123456"}``, token required."""
        code = code_from_body(await request.body())
        return JSONResponse(await broker.submit_mfa(profile, code), headers=NO_STORE)

    @app.exception_handler(BrokerError)
    async def broker_error(request: Request, exc: BrokerError) -> Response:
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

    def warm(path: str) -> bytes | None:
        """GET /creds/{profile} and GET /creds when the answer is warm; None sends the
        request through FastAPI, so every other case (and every error) keeps one path."""
        if path == "/creds":
            return broker.warm_body(broker.settings.default_profile)
        if path.startswith("/creds/"):
            profile = path[7:]
            if profile and "/" not in profile:
                return broker.warm_body(profile)
        return None

    return Guard(app, token, refusals, warm=warm)


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
