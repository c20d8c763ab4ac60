"""CredentialCache and Refresher with an injected clock and in-process fake providers."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest

from rolebroker.cache import CredentialCache
from rolebroker.credentials import Credentials
from rolebroker.errors import BrokerError, StsRefused, StsTimeout, StsUnavailable
from rolebroker.providers import CredentialProvider
from rolebroker.refresher import Refresher
from rolebroker.timing import RefreshTiming


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class FakeHop(CredentialProvider):
    """Counts fetches; issues credentials valid for ``lifetime`` seconds of the fake clock."""

    name: str
    clock: FakeClock
    source: CredentialProvider | None = None
    lifetime: float = 3600.0
    delay: float = 0.0
    fail_with: BrokerError | None = None
    calls: int = 0
    sources_seen: list[Credentials | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def profile(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def key(self) -> str:
        return f"fake:{self.name}"

    @property
    def label(self) -> str:
        return f"fake {self.name}"

    def fetch(self, source: Credentials | None) -> Credentials:
        with self.lock:
            self.calls += 1
            n = self.calls
        self.sources_seen.append(source)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_with is not None:
            raise type(self.fail_with)(self.fail_with.message)
        expiration = None if self.lifetime == float("inf") else self.clock() + self.lifetime
        return Credentials(f"ASIA{self.name}{n}", "secret", "token", expiration)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(clock: FakeClock, **kwargs: float) -> CredentialCache:
    timing = RefreshTiming(refresh_before=kwargs.pop("refresh_before", 1200.0), serve_floor=300.0)
    return CredentialCache(timing, clock=clock, jitter=lambda: 0.5, **kwargs)  # type: ignore[arg-type]


async def test_fifty_concurrent_cold_requests_share_one_fetch_per_hop(clock: FakeClock) -> None:
    cache = make_cache(clock)
    root = FakeHop("root", clock, delay=0.05)
    mid = FakeHop("mid", clock, source=root, delay=0.05)
    top = FakeHop("top", clock, source=mid, delay=0.05)
    results = await asyncio.gather(*(cache.get(top) for _ in range(50)))
    assert {r.access_key_id for r in results} == {"ASIAtop1"}
    assert (root.calls, mid.calls, top.calls) == (1, 1, 1)
    assert top.sources_seen[0] is not None and top.sources_seen[0].access_key_id == "ASIAmid1"


async def test_hops_are_shared_between_chains(clock: FakeClock) -> None:
    cache = make_cache(clock)
    root = FakeHop("root", clock)
    prod = FakeHop("prod", clock, source=root)
    admin = FakeHop("admin", clock, source=prod)
    await cache.get(admin)
    assert cache.peek(prod) is not None  # serving prod after prod-admin costs nothing
    await cache.get(prod)
    assert (root.calls, prod.calls, admin.calls) == (1, 1, 1)


async def test_warm_until_refresh_at_then_refreshed(clock: FakeClock) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock)
    first = await cache.get(hop)
    clock.now += 3600 - 1200 - 1
    assert cache.peek(hop) == first
    clock.now += 2
    assert cache.peek(hop) is None
    second = await cache.get(hop)
    assert second.access_key_id == "ASIAa2"
    assert second.remaining(clock()) > 1200


async def test_due_credentials_are_served_while_sts_fails_but_never_past_the_floor(clock: FakeClock) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock)
    first = await cache.get(hop)
    clock.now += 3000  # due (600 s left), still servable (floor 300 s)
    hop.fail_with = StsUnavailable("down")
    assert await cache.get(hop) == first
    assert cache.stats(hop).consecutive_failures == 1
    clock.now += 301  # 299 s left: below the floor
    with pytest.raises(StsUnavailable):
        await cache.get(hop)


async def test_cold_failure_is_not_retried_within_the_pause(clock: FakeClock) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock, fail_with=StsRefused("no"))
    with pytest.raises(StsRefused):
        await cache.get(hop)
    with pytest.raises(StsRefused):
        await cache.get(hop)
    assert hop.calls == 1
    clock.now += 1.5
    hop.fail_with = None
    assert (await cache.get(hop)).access_key_id == "ASIAa2"


async def test_slow_sts_answers_504_and_the_fetch_goes_on(clock: FakeClock) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock, delay=0.3)
    with pytest.raises(StsTimeout):
        await cache.get(hop, wait=0.05)
    assert cache.in_flight(hop)
    result = await cache.get(hop, wait=2)
    assert result.access_key_id == "ASIAa1"
    assert hop.calls == 1


async def test_a_cancelled_request_does_not_cancel_the_fetch(clock: FakeClock) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock, delay=0.2)
    request = asyncio.ensure_future(cache.get(hop))
    await asyncio.sleep(0.05)
    request.cancel()
    await asyncio.sleep(0.3)
    assert cache.peek(hop) is not None
    assert hop.calls == 1


async def test_unexpected_exceptions_become_broker_errors(clock: FakeClock) -> None:
    cache = make_cache(clock)

    class Broken(FakeHop):
        def fetch(self, source: Credentials | None) -> Credentials:
            raise KeyError("boom")

    with pytest.raises(BrokerError) as info:
        await cache.get(Broken("b", clock))
    assert info.value.code == "InternalError"


async def test_refresher_renews_due_hops_with_backoff(clock: FakeClock) -> None:
    cache = make_cache(clock)
    root = FakeHop("root", clock, lifetime=float("inf"))
    top = FakeHop("top", clock, source=root)
    refresher = Refresher(cache, lambda: [top])
    refresher.tick()  # cold: starts the fetch
    await asyncio.sleep(0.05)
    assert top.calls == 1
    assert refresher.tick() == 0  # fresh: nothing to do
    clock.now += 3600 - 1200
    top.fail_with = StsUnavailable("down")
    assert refresher.tick() == 1
    await asyncio.sleep(0.05)
    assert refresher.tick() == 0  # backing off
    clock.now += 2
    top.fail_with = None
    assert refresher.tick() == 1
    await asyncio.sleep(0.05)
    assert cache.peek(top) is not None and top.calls == 3
    assert root.calls == 1


async def test_forget_drops_hops_no_profile_uses(clock: FakeClock) -> None:
    cache = make_cache(clock)
    keep, drop = FakeHop("keep", clock), FakeHop("drop", clock)
    await cache.get(keep)
    await cache.get(drop)
    cache.forget({keep.key})
    assert cache.peek(keep) is not None
    assert cache.peek(drop) is None


async def test_sessions_shorter_than_refresh_before_are_warned_about_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(clock)
    short = FakeHop("short", clock, lifetime=900)
    await cache.get(short)
    clock.now += 451
    await cache.get(short)
    assert short.calls == 2
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("short profile=short")]
    assert len(warnings) == 1
    assert "raise duration_seconds" in warnings[0]
    await cache.get(FakeHop("long", clock))
    assert not any("profile=long" in r.getMessage() and "short" in r.getMessage() for r in caplog.records)
