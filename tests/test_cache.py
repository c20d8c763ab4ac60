"""CredentialCache and Refresher with an injected clock and in-process fake providers."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from rolebroker.cache import CredentialCache
from rolebroker.credentials import Credentials
from rolebroker.errors import (
    MAX_RETRY_AFTER,
    BrokerError,
    NoSourceCredentials,
    ProfileConfigError,
    SsoLoginRequired,
    StsRefused,
    StsTimeout,
    StsUnavailable,
    UpstreamCredentialsExpired,
)
from rolebroker.hops import Attempts, Hop
from rolebroker.livesettings import LiveSettings
from rolebroker.refresher import Refresher
from rolebroker.timing import RefreshTiming
from tests.support.clock import FakeClock
from tests.support.fakehop import FakeHop


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(clock: FakeClock, **kwargs: float) -> CredentialCache:
    timing = RefreshTiming(refresh_before=kwargs.pop("refresh_before", 1200.0), serve_floor=300.0)
    return CredentialCache(LiveSettings.of_timing(timing), clock=clock, jitter=lambda: 0.5, **kwargs)  # type: ignore[arg-type]


async def settle(cache: CredentialCache, hop: Hop) -> None:
    """Wait (briefly, in real time) for the background fetch of ``hop`` to land."""
    for _ in range(200):
        if not cache.in_flight(hop):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{hop.label} still in flight")


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
    assert await cache.get(hop) == first  # due: answered from memory, renewed behind
    await settle(cache, hop)
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
    await settle(cache, hop)
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
    await settle(cache, short)
    assert short.calls == 2
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("short profile=short")]
    assert len(warnings) == 1
    assert "raise duration_seconds" in warnings[0]
    await cache.get(FakeHop("long", clock))
    assert not any("profile=long" in r.getMessage() and "short" in r.getMessage() for r in caplog.records)


class CountingHop(FakeHop):
    """Reports two HTTP attempts per fetch, as botocore does when it retries once."""

    def fetch_counted(self, source: Credentials | None, attempts: Attempts) -> Credentials:
        attempts.add()
        attempts.add()
        return self.fetch(source)


async def test_a_due_entry_is_served_at_once_while_the_refresh_hangs(clock: FakeClock) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock)
    first = await cache.get(hop)
    clock.now += 3000  # due, 600 s left
    hop.hang = threading.Event()
    try:
        for _ in range(20):  # never waits on the flight, whatever the request rate
            assert await asyncio.wait_for(cache.get(hop, wait=5), 0.1) == first
        assert cache.in_flight(hop) and hop.calls == 2  # one refresh, still going
    finally:
        hop.hang.set()
    await settle(cache, hop)
    assert cache.peek(hop) is not None and cache.peek(hop) != first


async def test_a_hanging_hop_does_not_starve_healthy_ones(clock: FakeClock) -> None:
    cache = make_cache(clock)
    release = threading.Event()
    hanging = [FakeHop(f"hang{i}", clock, hang=release) for i in range(40)]
    try:
        for hop in hanging:
            with pytest.raises(StsTimeout):
                await cache.get(hop, wait=0.001)
        healthy = FakeHop("healthy", clock, delay=0.02)
        assert (await asyncio.wait_for(cache.get(healthy), 2)).access_key_id == "ASIAhealthy1"
    finally:
        release.set()
    for hop in hanging:
        await settle(cache, hop)


async def test_cold_requests_follow_the_backoff_whatever_their_rate(clock: FakeClock) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock, fail_with=StsUnavailable("throttled"))
    errors: list[BrokerError] = []
    for _ in range(600):  # one request every 100 ms for a minute
        with pytest.raises(StsUnavailable) as info:
            await cache.get(hop)
        errors.append(info.value)
        clock.now += 0.1
    # backoff 1, 2, 4, 8, 16, 32 s (jitter pinned to the middle): 6 calls, not 60
    assert hop.calls == 6
    assert len({id(e) for e in errors}) == len(errors)  # a fresh copy each time
    during = errors[-1]
    assert during.retry_after is not None and 0 < during.retry_after <= 32
    # Clients are told the backoff, but never to sleep for more than MAX_RETRY_AFTER.
    assert int(during.headers()["Retry-After"]) == min(math.ceil(during.retry_after), MAX_RETRY_AFTER)


async def test_a_hop_waiting_for_the_user_is_rechecked_soon_by_requests(clock: FakeClock) -> None:
    """An SSO login or an MFA code costs no STS call to check: the first request after the
    user fixed it must work, however long the refresher's backoff has grown."""
    cache = make_cache(clock)
    hop = FakeHop("sso", clock, fail_with=SsoLoginRequired("run: aws sso login --profile sso"))
    for _ in range(6):  # failures pile up: the refresher's backoff reaches 32 s
        with pytest.raises(SsoLoginRequired):
            await cache.get(hop)
        clock.now += 1.0
    assert cache.stats(hop).retry_at - clock.now > 5
    hop.fail_with = None  # the user logged in
    clock.now += 1.0
    assert (await cache.get(hop)).access_key_id
    # A failure that reached STS keeps the exponential backoff past the short pause.
    throttled = FakeHop("sts", clock, fail_with=StsUnavailable("down"))
    with pytest.raises(StsUnavailable):
        await cache.get(throttled)  # call 1: backoff 1 s
    clock.now += 1.0
    with pytest.raises(StsUnavailable):
        await cache.get(throttled)  # call 2: backoff 2 s
    throttled.fail_with = None
    clock.now += 1.0  # past USER_RECHECK, inside the backoff
    with pytest.raises(StsUnavailable):
        await cache.get(throttled)
    assert throttled.calls == 2


async def test_requests_during_a_sources_backoff_do_not_call_it(clock: FakeClock) -> None:
    cache = make_cache(clock)
    root = FakeHop("root", clock, fail_with=StsUnavailable("down"))
    top = FakeHop("top", clock, source=root)
    for _ in range(20):
        with pytest.raises(StsUnavailable):
            await cache.get(top)
        clock.now += 0.05
    assert (root.calls, top.calls) == (1, 0)


@pytest.mark.parametrize("lifetime", [-60.0, 0.0, 3.0])
async def test_credentials_issued_expired_are_never_served(clock: FakeClock, lifetime: float) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock, lifetime=lifetime)
    with pytest.raises(UpstreamCredentialsExpired) as info:
        await cache.get(hop)
    assert info.value.status == 502 and "too late to serve" in info.value.message
    assert cache.entry(hop) is None
    with pytest.raises(UpstreamCredentialsExpired):
        await cache.get(hop)  # backing off: not asked again at once
    assert hop.calls == 1
    clock.now += 1.1
    hop.lifetime = 3600
    assert (await cache.get(hop)).access_key_id == "ASIAa2"


@pytest.mark.parametrize("error", [ProfileConfigError("loop"), NoSourceCredentials("none")])
async def test_config_errors_wait_for_a_config_change(clock: FakeClock, error: BrokerError) -> None:
    cache = make_cache(clock)
    hop = FakeHop("a", clock, fail_with=error)
    refresher = Refresher(cache, lambda: [hop])
    with pytest.raises(type(error)):
        await cache.get(hop)
    for _ in range(10):
        clock.now += 3600
        assert refresher.tick() == 0
        with pytest.raises(type(error)):
            await cache.get(hop)
    assert hop.calls == 1
    hop.fail_with = None
    cache.forget({hop.key})  # a reload
    assert (await cache.get(hop)).access_key_id == "ASIAa2"


async def test_every_upstream_attempt_is_counted(clock: FakeClock) -> None:
    cache = make_cache(clock)
    await cache.get(CountingHop("a", clock))
    assert cache.sts_calls() == 2


async def test_refresher_sleeps_until_the_next_refresh_or_retry(clock: FakeClock) -> None:
    cache = make_cache(clock)
    root = FakeHop("root", clock, lifetime=float("inf"))
    top = FakeHop("top", clock, source=root)
    refresher = Refresher(cache, lambda: [top], clock=clock)
    refresher.tick()
    assert refresher.next_deadline() == math.inf  # in flight: its landing wakes the loop
    await settle(cache, top)
    refresh_at = clock.now + 3600 - 1200
    assert refresher.next_deadline() == refresh_at  # not the next second: the next real deadline
    clock.now = refresh_at
    top.fail_with = StsUnavailable("down")
    assert refresher.tick() == 1
    await settle(cache, top)
    assert refresher.next_deadline() == clock.now + 1.0  # the backoff's retry_at (jitter pinned)


async def test_refresher_wakes_on_events_not_on_a_timer(clock: FakeClock) -> None:
    cache = make_cache(clock)
    landed: list[bool] = []
    cache.on_landed = lambda: landed.append(True)
    top = FakeHop("top", clock)
    targets: list[Hop] = []
    refresher = Refresher(cache, lambda: targets, clock=clock, max_sleep=3600)
    task = asyncio.get_running_loop().create_task(refresher.run())
    try:
        await asyncio.sleep(0.02)
        targets.append(top)  # a profile newly used...
        await asyncio.sleep(0.05)
        assert top.calls == 0  # ...is not noticed by a timer: the loop sleeps
        refresher.wake()  # ...but by the wake-up the broker sends
        for _ in range(100):
            if top.calls and landed:
                break
            await asyncio.sleep(0.01)
        assert top.calls == 1 and landed == [True]  # and the landing is announced
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
