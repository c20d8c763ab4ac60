"""In process: the ASGI app over httpx.ASGITransport, a Broker on a fake clock and STS faked
at the hop level (tests/support/fakehop.py). Timing is proved here by moving the clock, not
by waiting on short real sessions; the e2e files keep one smoke test per behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rolebroker.authtoken import TokenStore
from rolebroker.broker import Broker
from rolebroker.cache import CredentialCache
from rolebroker.config import Settings
from rolebroker.credentials import Credentials
from rolebroker.errors import MfaRequired, StsUnavailable
from rolebroker.hops import SourceHop
from rolebroker.livesettings import LiveSettings
from rolebroker.mfa import MFA_WARN_BEFORE, MfaWatcher
from rolebroker.server import create_app
from rolebroker.statusdoc import ProfileStatus
from rolebroker.timing import RefreshTiming
from tests.support.awsconfig import AwsFiles
from tests.support.clock import FakeClock
from tests.support.fakehop import FakeHop, FakeMfaSessionHop, FakeSts

TOKEN = "a" * 43
HOUR = 3600.0


@dataclass
class App:
    client: httpx.AsyncClient
    broker: Broker
    clock: FakeClock
    sts: FakeSts

    async def key(self, profile: str) -> str:
        response = await self.client.get(f"/creds/{profile}")
        assert response.status_code == 200, response.text
        return str(response.json()["AccessKeyId"])

    async def settle(self, until: Callable[[], bool] = lambda: True, seconds: float = 5.0) -> None:
        """Let the refresher (ticking every 10 ms of real time) act on the moved clock."""
        for _ in range(int(seconds / 0.02)):
            await asyncio.sleep(0.02)
            idle = not any(self.broker.cache.in_flight(h) for h in self.sts.hops.values())
            if idle and until():
                return
        raise AssertionError("the broker did not settle")

    def status(self, profile: str) -> ProfileStatus:
        return next(row for row in self.broker.status().profiles if row.name == profile)


@pytest.fixture
async def app(aws_files: AwsFiles, tmp_path: Path) -> AsyncIterator[App]:
    aws_files.write()
    clock = FakeClock()
    sts = FakeSts(clock, lifetime=HOUR)
    settings = Settings(token_file=tmp_path / "token", refresh_before=1200.0)
    broker = Broker(
        settings, load_catalog=sts.load, reload_settings=lambda: settings, clock=clock, max_sleep=0.01
    )
    await broker.start()
    transport = httpx.ASGITransport(app=create_app(broker, TokenStore(TOKEN, tmp_path / "token")))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers={"Authorization": TOKEN}
        ) as client:
            yield App(client, broker, clock, sts)
    finally:
        await broker.stop()


async def test_cold_chain_is_fetched_once_per_hop_for_concurrent_requests(app: App) -> None:
    keys = await asyncio.gather(*(app.key("prod-admin") for _ in range(20)))
    assert len(set(keys)) == 1
    assert {hop.name: hop.calls for hop in app.sts.hops.values()} == {
        "base": 1,
        "dev": 1,
        "prod": 1,
        "prod-admin": 1,
    }
    await app.key("prod")  # a prefix of a served chain is already cached
    assert app.sts.calls() == 4


async def test_used_profiles_are_renewed_before_expiry_without_a_request(app: App) -> None:
    """What test_daemon proved with 20 s real sessions: the refresher renews on its own."""
    first = await app.key("prod")
    fetched = app.sts.calls()
    app.clock.advance(HOUR - 1200 - 300)  # before the refresh point (jitter is at most this)
    await app.settle()
    assert app.sts.calls() == fetched and app.status("prod").state == "fresh"
    app.clock.advance(1200)  # 600 s left: due
    await app.settle(until=lambda: app.sts.of("prod").calls == 2)
    assert app.status("prod").state == "fresh"
    assert await app.key("prod") != first
    assert app.sts.calls() == fetched + 2  # dev and prod; the root keys are never renewed twice


async def test_profiles_not_used_within_keep_warm_are_left_to_expire(app: App) -> None:
    await app.key("dev")
    app.clock.advance(app.broker.settings.keep_warm + 1)
    await app.settle()
    assert app.sts.of("dev").calls == 1
    assert app.status("dev").kept_warm is False


async def test_due_credentials_are_served_while_sts_is_down_but_never_past_the_floor(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """What test_upstream proved with 20 s sessions and a 19.5 s sleep."""
    first = await app.key("prod")
    app.sts.fail(StsUnavailable("STS is down; retry"))
    app.clock.advance(HOUR - 600)  # due, 600 s left: the refresher fails, the cached keys serve
    await app.settle(until=lambda: app.broker.cache.stats(app.sts.of("prod")).consecutive_failures >= 1)
    assert await app.key("prod") == first
    assert app.status("prod").state == "stale"
    for _ in range(3):
        await app.key("prod")
    assert sum(r.getMessage().startswith("stale profile=prod ") for r in caplog.records) == 1  # once
    app.clock.advance(301)  # 299 s left: below the serve floor
    refused = await app.client.get("/creds/prod")
    assert refused.status_code in (503, 504), refused.text
    assert set(refused.json()) == {"code", "message"}
    app.sts.fail(None)
    app.clock.advance(60)  # past any backoff
    await app.settle(until=lambda: app.broker.cache.stats(app.sts.of("prod")).consecutive_failures == 0)
    assert await app.key("prod") != first


async def test_status_reports_states_on_the_fake_clock(app: App) -> None:
    assert app.status("prod").state == "cold"
    await app.key("prod")
    row = app.status("prod")
    assert row.state == "fresh" and row.expires_in_seconds == int(HOUR)
    app.clock.advance(1000)
    assert app.status("prod").expires_in_seconds == int(HOUR - 1000)
    body = (await app.client.get("/status")).json()
    assert body["uptime_seconds"] == 1000 and TOKEN not in str(body)


async def test_edited_config_is_picked_up_by_the_next_request(app: App, aws_files: AwsFiles) -> None:
    missing = await app.client.get("/creds/staging")
    assert missing.status_code == 404 and missing.json()["code"] == "ProfileNotFound"
    with aws_files.config.open("a") as config:
        config.write(
            "\n[profile staging]\nrole_arn = arn:aws:iam::444444444444:role/staging\nsource_profile = dev\n"
        )
    await app.key("staging")
    await app.key("dev")
    assert app.sts.of("dev").calls == 1  # the reload kept dev's cached credentials


# -- the MFA watcher on a fake clock ---------------------------------------------------------

SERIAL = "arn:aws:iam::123456789012:mfa/alice"


@dataclass
class Watched:
    watcher: MfaWatcher
    cache: CredentialCache
    mfa: FakeMfaSessionHop
    role: FakeHop
    clock: FakeClock
    notes: list[str]

    async def tick(self) -> list[str]:
        """One tick; the notifications it sent (they run in a worker thread)."""
        before = len(self.notes)
        self.watcher.tick()
        await asyncio.sleep(0)
        for _ in range(100):
            if not any(not task.done() for task in asyncio.all_tasks() if task.get_name() == "notify"):
                break
            await asyncio.sleep(0.01)
        return self.notes[before:]


@pytest.fixture
async def watched() -> AsyncIterator[Watched]:
    clock = FakeClock()
    cache = CredentialCache(LiveSettings.of_timing(RefreshTiming(refresh_before=1200.0)), clock=clock)
    root = SourceHop(profile="base", fingerprint="x", static=Credentials("AKIA1", "secret"))
    mfa = FakeMfaSessionHop(
        profile="base", mfa_serial=SERIAL, source=root, unlock_profile="prod", clock=clock, lifetime=HOUR * 12
    )
    role = FakeHop("prod", clock, source=mfa)
    notes: list[str] = []
    watcher = MfaWatcher(
        cache,
        lambda: [role],
        settings=LiveSettings(Settings(refresh_before=1200.0)),
        clock=clock,
        notify=lambda title, body: notes.append(f"{title}: {body}"),
    )
    try:
        yield Watched(watcher, cache, mfa, role, clock, notes)
    finally:
        await watcher.stop()


async def test_watcher_announces_once_warns_ahead_once_and_waits_again_after_expiry(watched: Watched) -> None:
    """What test_mfa proved on 16 s real sessions, over the whole 12 h of a default session."""
    w = watched
    assert [n.split(":")[0] for n in await w.tick()] == ["rolebroker"]
    assert "MFA code needed" in w.notes[0] and "run: rolebroker mfa prod" in w.notes[0]
    assert await w.tick() == []  # announced once, not per tick
    with pytest.raises(MfaRequired):
        await w.cache.get(w.role)

    await w.watcher.submit(w.mfa, "123456")
    assert (await w.cache.get(w.role)).access_key_id == "ASIAprod1"
    assert w.watcher.state(w.mfa, w.clock()) == "active"
    assert await w.tick() == []

    w.clock.advance(12 * HOUR - MFA_WARN_BEFORE - 1)
    assert w.watcher.state(w.mfa, w.clock()) == "active" and await w.tick() == []
    w.clock.advance(2)  # an hour left: warned, once
    assert w.watcher.state(w.mfa, w.clock()) == "expiring"
    warned = await w.tick()
    assert len(warned) == 1 and "MFA session expiring" in warned[0] and "rolebroker mfa prod" in warned[0]
    w.clock.advance(60)
    assert await w.tick() == []

    w.clock.advance(MFA_WARN_BEFORE)  # expired: the profile waits for a code again, announced again
    assert w.watcher.state(w.mfa, w.clock()) == "required"
    again = await w.tick()
    assert len(again) == 1 and "MFA code needed" in again[0]
    with pytest.raises(MfaRequired):
        await w.cache.get(w.role)
    assert "123456" not in " ".join(w.notes)


async def test_short_mfa_sessions_are_warned_at_half_life(watched: Watched) -> None:
    w = watched
    short = FakeMfaSessionHop(
        profile="base",
        mfa_serial=SERIAL,
        source=w.mfa.source,
        unlock_profile="prod",
        clock=w.clock,
        lifetime=900,
    )
    await w.watcher.submit(short, "654321")
    entry = w.cache.entry(short)
    assert entry is not None and w.watcher.warn_at(entry) == w.clock() + 450
