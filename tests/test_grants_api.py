"""In process: grants on the HTTP API (create, list, revoke, self), their checks on the
credential routes (warm and cold), admin routes refusing them, caller identity (a fake
connection identity in the ASGI scope) and the audit lines, on a fake clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from rolebroker.audit import AuditLog
from rolebroker.authtoken import TokenStore
from rolebroker.broker import Broker
from rolebroker.callers import CALLER_EXTENSION, PeerLookup
from rolebroker.config import Settings
from rolebroker.grants import GrantStore
from rolebroker.identity import CallerIdentity
from rolebroker.server import create_app
from rolebroker.statusdoc import StatusDoc
from tests.support.awsconfig import AwsFiles
from tests.support.clock import FakeClock
from tests.support.fakehop import FakeSts

TOKEN = "m" * 43
HOUR = 3600.0


@dataclass
class GrantApp:
    client: httpx.AsyncClient
    broker: Broker
    clock: FakeClock
    grants: GrantStore
    audit: AuditLog
    caller: list[CallerIdentity | None]
    """What the fake connection says about the caller (None: no identity in the scope)."""

    async def grant(
        self, *profiles: str, ttl: float | None = None, name: str | None = None
    ) -> dict[str, Any]:
        body = {"profiles": list(profiles), "ttl_seconds": ttl, "name": name}
        response = await self.client.post("/grants", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def creds(self, path: str, auth: str | None) -> httpx.Response:
        request = self.client.build_request("GET", path)
        if auth is None:
            del request.headers["Authorization"]
        else:
            request.headers["Authorization"] = auth
        return await self.client.send(request)

    def audit_lines(self) -> list[dict[str, Any]]:
        self.audit.close()
        self.audit.start()
        if not self.audit.path.exists():
            return []
        return [json.loads(line) for line in self.audit.path.read_text().splitlines()]


@pytest.fixture
async def gapp(aws_files: AwsFiles, tmp_path: Path) -> AsyncIterator[GrantApp]:
    aws_files.write()
    clock = FakeClock()
    sts = FakeSts(clock, lifetime=HOUR)
    settings = Settings(token_file=tmp_path / "token")
    broker = Broker(
        settings, load_catalog=sts.load, reload_settings=lambda: settings, clock=clock, max_sleep=0.01
    )
    await broker.start()
    token = TokenStore(TOKEN, tmp_path / "token")
    grants = GrantStore(tmp_path / "state" / "grants.json", lambda: token.current, clock=clock)
    audit = AuditLog(tmp_path / "state" / "audit.jsonl", secrets=lambda: (token.current,), clock=clock)
    audit.start()
    inner = create_app(broker, token, grants=grants, audit=audit, caller_identity="netlink")
    caller: list[CallerIdentity | None] = [None]

    async def connection(scope: Any, receive: Any, send: Any) -> None:
        if caller[0] is not None:
            scope.setdefault("extensions", {})[CALLER_EXTENSION] = PeerLookup.known(caller[0])
        await inner(scope, receive, send)

    transport = httpx.ASGITransport(app=connection)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers={"Authorization": TOKEN}
        ) as client:
            yield GrantApp(client, broker, clock, grants, audit, caller)
    finally:
        audit.close()
        await broker.stop()


async def test_grant_serves_its_profiles_only_warm_and_cold(gapp: GrantApp) -> None:
    made = await gapp.grant("dev", name="ci")
    assert made["name"] == "ci" and made["profiles"] == ["dev"] and made["expires_at"] is None
    grant = made["grant"]
    for _ in range(2):  # cold, then the warm fast path
        ok = await gapp.creds("/creds/dev", grant)
        assert ok.status_code == 200, ok.text
        refused = await gapp.creds("/creds/prod", grant)
        assert refused.status_code == 403 and refused.json()["code"] == "GrantScope"
        assert "dev" in refused.json()["message"]
    # GET /creds with a grant: its first profile, not the daemon's default
    default = await gapp.creds("/creds", grant)
    assert default.status_code == 200 and default.json()["AccessKeyId"] == ok.json()["AccessKeyId"]


async def test_expiry_on_the_fake_clock(gapp: GrantApp) -> None:
    grant = (await gapp.grant("dev", ttl=600))["grant"]
    assert (await gapp.creds("/creds/dev", grant)).status_code == 200
    gapp.clock.advance(599)
    assert (await gapp.creds("/creds/dev", grant)).status_code == 200  # warm, still valid
    gapp.clock.advance(1)
    expired = await gapp.creds("/creds/dev", grant)
    assert expired.status_code == 403 and expired.json()["code"] == "GrantExpired"
    rows = (await gapp.client.get("/grants")).json()["grants"]
    assert [r["state"] for r in rows] == ["expired"]


async def test_revocation_takes_effect_at_once(gapp: GrantApp) -> None:
    made = await gapp.grant("dev", name="laptop")
    assert (await gapp.creds("/creds/dev", made["grant"])).status_code == 200
    revoked = await gapp.client.post("/grants/revoke", json={"name": "laptop"})
    assert revoked.status_code == 200 and revoked.json() == {"revoked": ["laptop"]}
    refused = await gapp.creds("/creds/dev", made["grant"])
    assert refused.status_code == 403 and refused.json()["code"] == "GrantRevoked"
    unknown = await gapp.client.post("/grants/revoke", json={"name": "nope"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "GrantNotFound"
    other = await gapp.grant("prod")
    everything = await gapp.client.post("/grants/revoke", json={"all": True})
    assert everything.json() == {"revoked": [other["name"]]}
    assert (await gapp.creds("/creds/prod", other["grant"])).json()["code"] == "GrantRevoked"


async def test_admin_routes_take_only_the_master_token(gapp: GrantApp) -> None:
    grant = (await gapp.grant("dev"))["grant"]
    for method, path in (
        ("GET", "/status"),
        ("POST", "/reload"),
        ("POST", "/mfa/dev"),
        ("POST", "/token/rotate"),
        ("GET", "/grants"),
        ("POST", "/grants"),
        ("POST", "/grants/revoke"),
    ):
        response = await gapp.client.request(method, path, headers={"Authorization": grant})
        assert response.status_code == 403, (path, response.text)
        assert response.json()["code"] == "MasterTokenRequired", path
    assert gapp.grants.path.exists()
    assert TOKEN not in (await gapp.client.get("/status")).text


async def test_grants_self_and_list_never_show_a_grant_string(gapp: GrantApp) -> None:
    made = await gapp.grant("dev", "prod", ttl=HOUR, name="pair")
    me = await gapp.creds("/grants/self", made["grant"])
    assert me.status_code == 200 and me.json()["name"] == "pair" and me.json()["state"] == "active"
    assert (await gapp.client.get("/grants/self")).json() == {"master": True}
    listing = await gapp.client.get("/grants")
    assert made["grant"] not in listing.text and made["grant"][-43:] not in listing.text
    assert made["grant"] not in gapp.grants.path.read_text()
    row = listing.json()["grants"][0]
    assert set(row) == {"name", "id", "profiles", "created_at", "expires_at", "last_used", "state"}


async def test_grant_requests_are_checked(gapp: GrantApp) -> None:
    missing = await gapp.client.post("/grants", json={"profiles": ["nosuch"]})
    assert missing.status_code == 404 and missing.json()["code"] == "ProfileNotFound"
    for body in ({"profiles": []}, {"profiles": "dev"}, {"profiles": ["dev"], "ttl_seconds": -1}, [1]):
        bad = await gapp.client.post("/grants", json=body)
        assert bad.status_code == 400 and bad.json()["code"] == "InvalidGrantRequest", body


async def test_a_rotated_master_token_invalidates_grants(gapp: GrantApp, tmp_path: Path) -> None:
    grant = (await gapp.grant("dev"))["grant"]
    assert (await gapp.client.post("/token/rotate")).status_code == 200
    refused = await gapp.creds("/creds/dev", grant)
    assert refused.status_code == 403 and refused.json()["code"] == "InvalidToken"


async def test_foreign_user_is_refused_whatever_it_sends(gapp: GrantApp) -> None:
    import os

    gapp.caller[0] = CallerIdentity(uid=os.getuid() + 4242, pid=1)
    for path in ("/creds/dev", "/status", "/proof"):
        response = await gapp.creds(path, TOKEN)
        assert response.status_code == 403 and response.json()["code"] == "ForeignUser", path
    assert (await gapp.creds("/healthz", None)).status_code == 200
    gapp.caller[0] = CallerIdentity(uid=None)  # unknown uid: no check
    assert (await gapp.creds("/creds/dev", TOKEN)).status_code == 200


async def test_same_user_without_token(gapp: GrantApp) -> None:
    import os

    gapp.caller[0] = CallerIdentity(uid=os.getuid(), pid=os.getpid(), exe="/usr/bin/python3")
    assert (await gapp.creds("/creds/dev", None)).status_code == 401
    gapp.broker.live.replace(replace(gapp.broker.settings, same_user_without_token=True))
    assert (await gapp.creds("/creds/dev", None)).status_code == 200
    assert (await gapp.creds("/status", None)).status_code == 401  # never admin routes
    gapp.caller[0] = CallerIdentity(uid=os.getuid() + 1)
    assert (await gapp.creds("/creds/dev", None)).json()["code"] == "ForeignUser"
    gapp.caller[0] = None  # uid unknown: a token is needed
    assert (await gapp.creds("/creds/dev", None)).status_code == 401


async def test_audit_lines_and_last_caller(gapp: GrantApp) -> None:
    made = await gapp.grant("dev", name="ci")
    gapp.caller[0] = CallerIdentity(uid=1000, pid=4321, exe="/usr/bin/node", cmdline=("node", "app.js"))
    import os

    gapp.caller[0] = replace(gapp.caller[0], uid=os.getuid())
    headers = {"Authorization": made["grant"], "User-Agent": "aws-sdk-js/3"}
    assert (await gapp.client.get("/creds/dev", headers=headers)).status_code == 200
    assert (await gapp.client.get("/creds/dev", headers=headers)).status_code == 200  # warm
    assert (await gapp.client.get("/creds/prod", headers=headers)).status_code == 403
    assert (await gapp.creds("/creds/dev", "wrong")).status_code == 403
    assert (await gapp.creds("/creds/dev", None)).status_code == 401
    lines = gapp.audit_lines()
    assert [(r["profile"], r["outcome"]) for r in lines] == [
        ("dev", "OK"),
        ("dev", "OK"),
        ("prod", "GrantScope"),
        ("dev", "InvalidToken"),
        ("dev", "MissingToken"),
    ]
    assert lines[0]["grant"] == "ci" and lines[0]["pid"] == 4321 and lines[0]["exe"] == "/usr/bin/node"
    assert lines[0]["user_agent"] == "aws-sdk-js/3"
    text = gapp.audit.path.read_text()
    assert made["grant"] not in text and TOKEN not in text
    status = (await gapp.client.get("/status")).json()
    assert status["caller_identity"] == "netlink"
    assert status["grants_file"] == str(gapp.grants.path) and status["audit_file"] == str(gapp.audit.path)
    row = next(p for p in status["profiles"] if p["name"] == "dev")
    assert row["last_caller"]["pid"] == 4321 and row["last_caller"]["grant"] == "ci"
    typed = StatusDoc.from_json(status)  # what `rolebroker status` reads
    assert typed.caller_identity == "netlink" and typed.grants_file == str(gapp.grants.path)
    dev = next(p for p in typed.profiles if p.name == "dev")
    assert dev.last_caller is not None and (dev.last_caller.exe, dev.last_caller.grant) == (
        "/usr/bin/node",
        "ci",
    )


async def test_grant_use_is_written_later_off_the_request_path(
    gapp: GrantApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from rolebroker import access

    monkeypatch.setattr(access, "FLUSH_DELAY", 0.05)
    made = await gapp.grant("dev", name="used")

    def last_used() -> object:
        return json.loads(gapp.grants.path.read_text())["grants"][0]["last_used"]

    assert (await gapp.creds("/creds/dev", made["grant"])).status_code == 200
    assert last_used() is None  # the request itself wrote nothing
    for _ in range(100):  # bounded: 2 s
        await asyncio.sleep(0.02)
        if last_used() is not None:
            break
    assert last_used() is not None
