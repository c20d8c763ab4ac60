"""How the CLI talks to a running daemon: always http://127.0.0.1:PORT with the token file.

The token is sent only on a connection whose listener first proved that it knows the token
(``GET /proof?nonce=...``, see authtoken.py): any local user can bind a free port, and a
squatter must learn nothing from the CLI.

HTTP through wire.py, a small strict client over a plain socket: no proxy settings apply (SDKs
never proxy the endpoint either), it adds no dependency to the CLI, and unlike ``http.client`` it
loads neither the ``email`` package nor OpenSSL, which a shell start would pay for.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rolebroker import discovery
from rolebroker.config import DEFAULT_PORT, Settings
from rolebroker.errors import BadReply, HttpError

if TYPE_CHECKING:
    from rolebroker.cli.wire import Connection
    from rolebroker.statusdoc import StatusDoc

CLIENT_HOST = "127.0.0.1"
"""The one host every SDK accepts in FULL_URI without a DNS lookup (docs/clients.md); the CLI uses it too."""

QUICK_TIMEOUT = 10.0
"""Seconds for health, status and reload. Generous because a socket-activated daemon is
started by the first connection and answers only once it is up."""


PROOF_BYTES = 4096
"""The most the CLI reads of a reply to ``GET /proof``: any listener may answer it."""


class ClientError(Exception):
    """Something the user must act on; the message says what to do."""


class DaemonUnreachable(ClientError):
    """Nothing (or not rolebroker) answers; ``hint`` says how to start it."""

    def __init__(self, summary: str, hint: str) -> None:
        super().__init__(f"{summary}; {hint}")
        self.summary = summary
        self.hint = hint


class NotRunning(DaemonUnreachable):
    """Connection refused: no daemon and no activation socket on the port."""


class ListenerNotProven(DaemonUnreachable):
    """The listener could not prove it knows the token: the token was not sent to it.
    ``detail`` says who holds the port, as far as this machine shows it."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(
            f"the process listening on {where} is not rolebroker (it could not prove it knows the token)",
            f"another user may be squatting the port: see `rolebroker doctor`{detail}",
        )
        self.detail = detail


class TokenUnavailable(ClientError):
    pass


class DaemonError(ClientError):
    """The daemon answered with an error body ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def user_must_act(self) -> bool:
        """4xx: a retry will not help (see errors.py)."""
        return 400 <= self.status < 500


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    text: str

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object; None for anything else (not every port is rolebroker)."""
        body = _json_or_none(self.text)
        return body if isinstance(body, dict) else None


def start_hint(settings: Settings) -> str:
    port = "" if settings.port == DEFAULT_PORT else f" --port {settings.port}"
    service = (
        "launchctl kickstart gui/$(id -u)/dev.rolebroker (when installed as a launchd agent)"
        if sys.platform == "darwin"
        else "systemctl --user start rolebroker (when installed as a user service)"
    )
    return f"start it with: {service}, or run: rolebroker serve{port}"


class DaemonClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._token: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{CLIENT_HOST}:{self.settings.port}"

    def creds_url(self, profile: str) -> str:
        return f"{self.base_url}{creds_path(profile)}"

    # -- token -------------------------------------------------------------------------

    def token(self) -> str:
        """The daemon's token. A missing file usually means the daemon never ran; asking
        /healthz first also starts a socket-activated daemon, which then writes it."""
        if self._token is None:
            from rolebroker.authtoken import (
                read_token,
            )  # with the proof's hashing: not every command needs it

            try:
                self._token = read_token(self.settings.token_file)
            except FileNotFoundError:
                self.healthz()
                try:
                    self._token = read_token(self.settings.token_file)
                except FileNotFoundError:
                    raise TokenUnavailable(
                        f"rolebroker answers on {CLIENT_HOST}:{self.settings.port} but there is no token "
                        f"file at {self.settings.token_file}; the daemon uses another one: pass --token-file "
                        "or set ROLEBROKER_TOKEN_FILE (or token_file in config.toml) to the daemon's"
                    ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise TokenUnavailable(
                    f"cannot read the token file {self.settings.token_file}: {exc}"
                ) from None
        return self._token

    # -- requests ----------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        reply = self.request("GET", "/healthz", authorize=False)
        body = _json_or_none(reply.text)
        if reply.status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
            raise DaemonUnreachable(
                f"something answers on {CLIENT_HOST}:{self.settings.port} but it is not rolebroker "
                f"(GET /healthz gave HTTP {reply.status})",
                "pass the daemon's port with --port or ROLEBROKER_PORT, or move that program elsewhere",
            )
        return body

    def status(self) -> StatusDoc:
        from rolebroker.statusdoc import StatusDoc  # only status and doctor read it

        body = self.checked("GET", "/status").json_object()
        if body is None:
            raise DaemonError(
                BadReply.status,
                BadReply.code,
                "GET /status did not return a JSON object; is that rolebroker?",
            )
        return StatusDoc.from_json(body)

    def credentials(self, profile: str) -> Reply:
        """The raw ECS JSON reply (the body is what curl would print)."""
        timeout = self.settings.request_timeout + QUICK_TIMEOUT
        return self.checked("GET", creds_path(profile), timeout=timeout)

    def reload(self) -> dict[str, Any]:
        return self.checked("POST", "/reload").json_object() or {}

    def rotate_token(self) -> dict[str, Any]:
        """The daemon writes a new token to its token file and refuses the old one at once."""
        return self.checked("POST", "/token/rotate").json_object() or {}

    def submit_mfa(self, profile: str, code: str) -> dict[str, Any]:
        """Hand a code over; the daemon calls GetSessionToken once, so allow for a slow STS."""
        path = "/mfa/" + urllib.parse.quote(profile, safe="")
        timeout = self.settings.request_timeout + 30
        return self.checked("POST", path, json_body={"code": code}, timeout=timeout).json_object() or {}

    # -- grants ------------------------------------------------------------------------

    def create_grant(self, profiles: list[str], ttl: float | None, name: str | None) -> dict[str, Any]:
        """POST /grants: the reply carries the grant string (shown once)."""
        body = {"profiles": profiles, "ttl_seconds": ttl, "name": name}
        return self.checked("POST", "/grants", json_body=body).json_object() or {}

    def grants(self) -> list[dict[str, Any]]:
        """GET /grants: metadata only, never a grant string."""
        rows = (self.checked("GET", "/grants").json_object() or {}).get("grants")
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    def revoke_grants(self, name: str | None = None) -> list[str]:
        """POST /grants/revoke: one name (or id), or every grant when ``name`` is None."""
        body: dict[str, Any] = {"all": True} if name is None else {"name": name}
        revoked = (self.checked("POST", "/grants/revoke", json_body=body).json_object() or {}).get("revoked")
        return [str(n) for n in revoked] if isinstance(revoked, list) else []

    def checked(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        timeout: float = QUICK_TIMEOUT,
    ) -> Reply:
        """A request that must succeed: an error reply becomes DaemonError."""
        reply = self.request(method, path, json_body=json_body, timeout=timeout)
        if reply.status in (200, 201):
            return reply
        error = error_of(reply)
        if error.code == "InvalidToken":
            raise TokenUnavailable(
                f"the token in {self.settings.token_file} is not the one the daemon on "
                f"{CLIENT_HOST}:{self.settings.port} uses: it was started with another token file; pass "
                "--token-file or set ROLEBROKER_TOKEN_FILE to the daemon's, or restart the daemon"
            )
        raise error

    def request(
        self,
        method: str,
        path: str,
        *,
        authorize: bool = True,
        token: str | None = None,
        json_body: Mapping[str, Any] | None = None,
        timeout: float = QUICK_TIMEOUT,
    ) -> Reply:
        headers = {"Host": f"{CLIENT_HOST}:{self.settings.port}"}
        proof_token = self.token() if authorize else None
        if authorize:
            headers["Authorization"] = token if token is not None else self.token()
        body = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(json_body).encode()
        # Not at module level: `rolebroker token` reads a file and sends nothing.
        from rolebroker.cli import wire

        connection: Connection | None = None
        try:
            # One deadline for the connect, the proof and the request: no server holds us longer.
            connection = wire.connect(CLIENT_HOST, self.settings.port, timeout)
            if proof_token is not None:
                # Same connection for the proof and the token: nobody can take the port in between.
                # A wire.Connection never reconnects, so the token goes only to the proven listener.
                self._prove(connection, proof_token)
            response = connection.exchange(method, path, headers, body)
            return Reply(response.status, response.body.decode("utf-8", "replace"))
        except wire.NotConnected:
            raise DaemonUnreachable(
                f"rolebroker on {CLIENT_HOST}:{self.settings.port} closed the connection after its proof",
                "retry; if it persists, check its log (journalctl --user -u rolebroker)",
            ) from None
        except ConnectionRefusedError:
            raise NotRunning(
                f"rolebroker is not running on {CLIENT_HOST}:{self.settings.port} (connection refused)",
                start_hint(self.settings),
            ) from None
        except TimeoutError:
            raise DaemonUnreachable(
                f"rolebroker on {CLIENT_HOST}:{self.settings.port} did not answer {method} {path} "
                f"within {timeout:.0f}s",
                "check its log (journalctl --user -u rolebroker) or restart it",
            ) from None
        except (OSError, wire.WireError) as exc:
            raise DaemonUnreachable(
                f"cannot talk to rolebroker on {CLIENT_HOST}:{self.settings.port} "
                f"({type(exc).__name__}: {exc})",
                start_hint(self.settings),
            ) from None
        finally:
            if connection is not None:
                connection.close()

    def _prove(self, connection: Connection, token: str) -> None:
        """Ask the listener for HMAC(token, nonce, the address we connected to); no token sent."""
        from rolebroker.authtoken import new_nonce, proof_is_valid
        from rolebroker.cli import wire

        nonce = new_nonce()
        host = {"Host": f"{CLIENT_HOST}:{self.settings.port}"}
        try:
            response = connection.exchange("GET", f"/proof?nonce={nonce.hex()}", host, body_limit=PROOF_BYTES)
        except wire.ReplyTooLarge:
            raise self._not_proven() from None  # a proof is 80 bytes: whoever sends more is not rolebroker
        text = response.body.decode("utf-8", "replace")
        body = Reply(response.status, text).json_object() if response.status == 200 else None
        answer = body.get("proof") if body else None
        if not proof_is_valid(token, nonce, CLIENT_HOST, self.settings.port, answer):
            raise self._not_proven()

    def _not_proven(self) -> ClientError:
        """Say who listens, as far as this machine shows it: another user (a squatter), or a
        daemon of ours that uses another token file (named by its discovery file)."""
        where = f"{CLIENT_HOST}:{self.settings.port}"
        from rolebroker import procfs  # only on this rare failure

        holders = procfs.holders_of(CLIENT_HOST, self.settings.port)
        foreign = [h for h in holders if h.uid != os.getuid()]
        daemon = discovery.read(discovery.discovery_file(os.environ))
        if (
            not foreign
            and daemon is not None
            and daemon.port == self.settings.port
            and daemon.token_file != self.settings.token_file.absolute()
        ):
            return TokenUnavailable(
                f"the token in {self.settings.token_file} is not the one the daemon on {where} uses "
                f"(pid {daemon.pid}, token file {daemon.token_file}); pass --token-file "
                f"{daemon.token_file} or set ROLEBROKER_TOKEN_FILE to it, or restart the daemon"
            )
        detail = ""
        if foreign:
            detail = " (" + "; ".join(h.describe() for h in foreign) + ")"
        elif holders:
            detail = (
                " (it runs as your own user: if it is a rolebroker started with another token file, "
                "pass that file with --token-file; an older rolebroker without the proof: restart it)"
            )
        return ListenerNotProven(where, detail)


def creds_path(profile: str) -> str:
    return "/creds/" + urllib.parse.quote(profile, safe="")


def error_of(reply: Reply) -> DaemonError:
    body = _json_or_none(reply.text)
    if isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str):
        return DaemonError(reply.status, body["code"], body["message"])
    return DaemonError(
        reply.status, HttpError.code, f"HTTP {reply.status} without an error body; see the daemon log"
    )


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
