"""A tiny IAM Identity Center portal on loopback (moto has none): ``GetRoleCredentials``,
the one SSO call botocore makes for an SSO profile, plus the token cache file that
``aws sso login`` leaves behind. Point the daemon at it with ``AWS_ENDPOINT_URL_SSO``."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.procs import free_port

ACCESS_TOKEN = "ssoTestAccessToken-0123456789abcdefghijklmnopqrstuvwxyz"
ROLE_KEY_ID = "ASIASSOTESTROLEKEY01"
ROLE_SECRET = "ssoTestRoleSecretKey000000000000000000000"
ROLE_SESSION_TOKEN = "ssoTestRoleSessionToken0000000000000000000000000000000000"


@dataclass
class SsoCall:
    role_name: str
    account_id: str
    bearer_token: str = field(repr=False)


class FakeSsoPortal:
    """``GET /federation/credentials``: 200 with role credentials for ``access_token``,
    401 UnauthorizedException (what botocore turns into UnauthorizedSSOTokenError) otherwise."""

    def __init__(self, access_token: str = ACCESS_TOKEN, lifetime: int = 3600) -> None:
        self.access_token = access_token
        self.lifetime = lifetime
        self.calls: list[SsoCall] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-sso", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        portal = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                token = self.headers.get("x-amz-sso_bearer_token", "")
                with portal._lock:
                    portal.calls.append(
                        SsoCall(query.get("role_name", ""), query.get("account_id", ""), token)
                    )
                if url.path != "/federation/credentials":
                    self._reply(404, {"message": "not found"}, "ResourceNotFoundException")
                elif token != portal.access_token:
                    self._reply(
                        401, {"message": "Session token not found or invalid"}, "UnauthorizedException"
                    )
                else:
                    expiration_ms = int((time.time() + portal.lifetime) * 1000)
                    self._reply(
                        200,
                        {
                            "roleCredentials": {
                                "accessKeyId": ROLE_KEY_ID,
                                "secretAccessKey": ROLE_SECRET,
                                "sessionToken": ROLE_SESSION_TOKEN,
                                "expiration": expiration_ms,
                            }
                        },
                    )

            def _reply(self, status: int, body: dict[str, Any], error_type: str | None = None) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if error_type:
                    self.send_header("x-amzn-ErrorType", error_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def write_sso_token(
    home: Path,
    *,
    start_url: str,
    region: str = "us-east-1",
    session_name: str | None = None,
    access_token: str = ACCESS_TOKEN,
    expires_in: float = 3600,
) -> Path:
    """What ``aws sso login`` writes: ``~/.aws/sso/cache/<sha1>.json``, keyed by the
    sso-session name, or by the start URL for a legacy profile (botocore SSOTokenLoader)."""
    key = hashlib.sha1((session_name or start_url).encode("utf-8")).hexdigest()  # noqa: S324
    path = home / ".aws" / "sso" / "cache" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    expires_at = datetime.fromtimestamp(time.time() + expires_in, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(
        json.dumps(
            {"startUrl": start_url, "region": region, "accessToken": access_token, "expiresAt": expires_at}
        )
    )
    return path
