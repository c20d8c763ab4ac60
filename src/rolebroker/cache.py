"""Per-hop credential cache with single-flight fetches, wrapping any hop.

Every hop of every chain has its own entry, so ``prod-admin`` chained through ``prod``
reuses ``prod``'s credentials. Concurrent requests for one hop share one in-flight fetch;
the fetch is a task of its own, so a client that disconnects or times out does not
cancel it, and its retry joins the same call. A request never waits on a refresh while
cached credentials may still be served, and never calls upstream during a hop's backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from cachetools import TLRUCache

from rolebroker.credentials import Credentials, format_expiration
from rolebroker.errors import BrokerError, InternalError, StsTimeout, UpstreamCredentialsExpired
from rolebroker.hops import Attempts, Hop
from rolebroker.livesettings import LiveSettings
from rolebroker.timing import RefreshTiming

log = logging.getLogger("rolebroker")

Clock = Callable[[], float]

USER_RECHECK = 1.0
"""Seconds before a request looks again at a hop waiting for the user (login, MFA code)."""
_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(slots=True)
class CacheEntry:
    credentials: Credentials
    issued_at: float
    refresh_at: float
    servable_until: float
    warned_stale: bool = False
    body: bytes | None = field(default=None, repr=False)
    """The HTTP body of these credentials, serialised once for the fast path (server.py)."""


@dataclass(slots=True)
class HopStats:
    """What /status shows about one hop. Never holds a secret."""

    label: str
    calls_sts: bool
    fetches: int = 0
    last_refresh: float | None = None
    last_error: BrokerError | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    retry_at: float = 0.0
    warned_short: bool = False


class ThreadPerFlight(Executor):
    """Runs each fetch on a thread of its own. Single flight bounds the threads by the number
    of distinct hops in flight, so a hop whose STS hangs never holds a worker that another
    profile needs (a shared pool fills up with hanging calls and starves healthy ones)."""

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting task, never lost
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name="rolebroker-fetch", daemon=True).start()
        return future


class CredentialCache:
    def __init__(
        self,
        live: LiveSettings,
        *,
        clock: Clock = time.time,
        executor: Executor | None = None,
        maxsize: int = 1024,
        max_backoff: float = 60.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._live = live
        self._clock = clock
        self._executor = executor or ThreadPerFlight()
        self._max_backoff = max_backoff
        self._jitter = jitter
        # Entries vanish once they may no longer be served; refresh_at decides renewal.
        self._entries: TLRUCache[str, CacheEntry] = TLRUCache(
            maxsize, ttu=lambda _key, entry, _now: entry.servable_until, timer=clock
        )
        self._flights: dict[str, asyncio.Task[Credentials]] = {}
        self._stats: dict[str, HopStats] = {}
        self.on_landed: Callable[[], None] | None = None
        """Called when a fetch ends: the refresher and the MFA watcher sleep until told."""

    @property
    def timing(self) -> RefreshTiming:
        """Read from the live settings at each use: a reload's refresh_before applies from
        each hop's next fetch on."""
        return self._live.timing

    # -- reading -----------------------------------------------------------------------

    def peek(self, hop: Hop) -> Credentials | None:
        """The warm path: credentials that need no refresh, from memory, or None."""
        entry = self._entries.get(hop.key)
        if entry is not None and self._clock() < entry.refresh_at:
            return entry.credentials
        return None

    def peek_body(self, hop: Hop) -> bytes | None:
        """:meth:`peek` as the JSON body GET /creds answers, serialised once per entry."""
        entry = self._entries.get(hop.key)
        if entry is None or self._clock() >= entry.refresh_at:
            return None
        if entry.body is None:
            document = entry.credentials.to_ecs_json()
            entry.body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return entry.body

    def entry(self, hop: Hop) -> CacheEntry | None:
        return self._entries.get(hop.key)

    def stats(self, hop: Hop) -> HopStats:
        stats = self._stats.get(hop.key)
        if stats is None:
            stats = self._stats[hop.key] = HopStats(hop.label, hop.calls_sts)
        return stats

    def in_flight(self, hop: Hop) -> bool:
        return hop.key in self._flights

    def sts_calls(self) -> int:
        return sum(s.fetches for s in self._stats.values() if s.calls_sts)

    async def get(self, hop: Hop, *, wait: float | None = None) -> Credentials:
        """Credentials for ``hop``, fetching them (once) if needed.

        Servable credentials are answered at once, also when due: the refresh starts (or
        goes on) in the background, so no client ever waits on a slow or hanging STS while
        the cache can serve it. A cold request joins the flight for at most ``wait``
        seconds, then gets StsTimeout while the fetch goes on for the next attempt. During
        a hop's backoff no fetch starts: the request gets the last error at once.
        """
        now = self._clock()
        entry = self._entries.get(hop.key)
        if entry is not None:
            if now >= entry.refresh_at:
                self.refresh_due(hop)
                if self.stats(hop).consecutive_failures:
                    self._warn_stale(hop, entry)
            return entry.credentials
        flight = self._flights.get(hop.key)
        if flight is None:
            stats = self.stats(hop)
            until = self._request_retry_at(stats)
            if stats.last_error is not None and now < until:
                raise stats.last_error.copy(retry_after=until - now)
            flight = self._start(hop)
        return await self._join(flight, hop, wait, then="retry in a few seconds")

    @staticmethod
    def _request_retry_at(stats: HopStats) -> float:
        """When a request may try the hop again. A failure only the user can fix and whose
        check calls nobody (an SSO login, an MFA code) is looked at again after a short
        pause, so the first request after `aws sso login` works; the background refresher
        and every failure that reached STS keep the exponential backoff."""
        error = stats.last_error
        if error is not None and error.awaits_user and not error.reached_upstream:
            return min(stats.retry_at, (stats.last_error_at or 0.0) + USER_RECHECK)
        return stats.retry_at

    def refresh_due(self, hop: Hop) -> bool:
        """For the refresher: start a background refresh if this hop needs one now."""
        if hop.key in self._flights:
            return False
        now = self._clock()
        stats = self.stats(hop)
        if now < stats.retry_at or self._source_backing_off(hop, now):
            return False
        entry = self._entries.get(hop.key)
        if entry is not None and now < entry.refresh_at:
            return False
        self._start(hop)
        return True

    async def renew(self, hop: Hop, *, wait: float | None = None) -> Credentials:
        """Fetch now, cached or backing off: for what only the user can unblock (a submitted
        MFA code travels in ``hop``). Waits for a fetch already in flight first."""
        flight = self._flights.get(hop.key)
        if flight is not None:
            await asyncio.wait([flight], timeout=wait)
        flight = self._start(hop)
        return await self._join(flight, hop, wait, then="check rolebroker status in a few seconds")

    async def _join(
        self,
        flight: asyncio.Task[Credentials],
        hop: Hop,
        wait: float | None,
        *,
        then: str,
    ) -> Credentials:
        """Wait for a flight without owning it: a timeout or a cancelled request leaves it running."""
        try:
            return await asyncio.wait_for(asyncio.shield(flight), wait)
        except BrokerError as exc:
            own = self.stats(hop).retry_at - self._clock()
            raise exc.copy(retry_after=max(own, exc.retry_after or 0.0, 0.0)) from None
        except TimeoutError:
            raise StsTimeout(
                f"STS has not answered yet for {hop.label}; the call goes on in the background, {then}"
            ) from None

    def _source_backing_off(self, hop: Hop, now: float) -> bool:
        """A hop whose uncached source is waiting out a backoff would only fail through it:
        without this, a chain waiting for an MFA code or a login is retried every tick."""
        source = hop.source
        while source is not None and source.key not in self._entries:
            if now < self.stats(source).retry_at:
                return True
            source = source.source
        return False

    def forget(self, keep: set[str]) -> None:
        """Drop entries of hops that no profile uses any more (after a reload)."""
        for key in [k for k in self._entries if k not in keep]:
            self._entries.pop(key, None)
        for key in [k for k in self._stats if k not in keep and k not in self._flights]:
            del self._stats[key]
        for stats in self._stats.values():
            if stats.retry_at == float("inf"):  # waiting for a config change: this may be it
                stats.retry_at = 0.0

    # -- fetching ----------------------------------------------------------------------

    def _start(self, hop: Hop) -> asyncio.Task[Credentials]:
        task = asyncio.get_running_loop().create_task(self._fetch(hop), name=f"fetch {hop.label}")
        self._flights[hop.key] = task
        task.add_done_callback(lambda t: self._landed(hop.key, t))
        return task

    def _landed(self, key: str, task: asyncio.Task[Credentials]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # marks it retrieved; errors were logged in _fetch
        if self.on_landed is not None:
            self.on_landed()

    async def _fetch(self, hop: Hop) -> Credentials:
        stats = self.stats(hop)
        source = await self.get(hop.source) if hop.source is not None else None
        loop = asyncio.get_running_loop()
        attempts = Attempts()
        try:
            credentials = await loop.run_in_executor(self._executor, hop.fetch_counted, source, attempts)
            now = self._clock()
            if not self.timing.fresh_enough(now, credentials):
                raise self._expired(hop, credentials, now)
        except BrokerError as exc:
            stats.fetches += exc.reached_upstream if attempts.count is None else attempts.count
            self._failed(hop, stats, exc)
            raise
        except Exception as exc:
            stats.fetches += 1 if attempts.count is None else attempts.count
            log.exception("unexpected error fetching %s", hop.label)
            error = InternalError(
                f"unexpected {type(exc).__name__} while fetching {hop.label}; see the daemon log"
            )
            self._failed(hop, stats, error)
            raise error from None
        stats.fetches += 1 if attempts.count is None else attempts.count
        self._entries[hop.key] = CacheEntry(
            credentials,
            issued_at=now,
            refresh_at=self.timing.refresh_at(now, credentials),
            servable_until=self.timing.servable_until(now, credentials),
        )
        recovered = stats.consecutive_failures > 0
        stats.last_refresh, stats.consecutive_failures, stats.retry_at = now, 0, 0.0
        if credentials.expiration is not None:
            log.info(
                "refreshed profile=%s %s expires=%s in=%ds%s",
                hop.profile,
                _what(hop),
                format_expiration(credentials.expiration),
                credentials.remaining(now),
                " (recovered)" if recovered else "",
            )
            self._warn_if_short(hop, stats, credentials.expiration - now)
        return credentials

    def _expired(self, hop: Hop, credentials: Credentials, now: float) -> UpstreamCredentialsExpired:
        expiration = credentials.expiration or 0.0
        return UpstreamCredentialsExpired(
            f"{hop.label} was handed credentials that expire at {format_expiration(expiration)} "
            f"({credentials.remaining(now):.0f} s from now): too late to serve. Check the clock of this "
            "machine and the credential source (credential_process output, SSO, STS endpoint); "
            "retried with backoff"
        )

    def _warn_if_short(self, hop: Hop, stats: HopStats, lifetime: float) -> None:
        """botocore re-fetches on every call once fewer than 15 min remain: a session that
        never lasts more than refresh_before keeps every boto3 client on the slow path."""
        if stats.warned_short or lifetime > self.timing.refresh_before or not hop.calls_sts:
            return
        stats.warned_short = True
        log.warning(
            "short profile=%s %s: sessions last %ds, not more than refresh_before=%ds, so they are "
            "renewed at half life and SDKs re-fetch often; raise duration_seconds (e.g. 3600) if the "
            "role allows it",
            hop.profile,
            _what(hop),
            lifetime,
            self.timing.refresh_before,
        )

    def _failed(self, hop: Hop, stats: HopStats, error: BrokerError) -> None:
        now = self._clock()
        # Waiting for the user (MFA code, SSO login) is news once, not at every retry.
        previous = stats.last_error if stats.consecutive_failures else None
        repeat = error.awaits_user and previous is not None and previous.code == error.code
        stats.last_error, stats.last_error_at = error, now
        stats.consecutive_failures += 1
        if error.needs_config_change:
            stats.retry_at = float("inf")  # until a reload or a changed file re-keys the hop
            retry = "until the AWS config changes"
        else:
            # What a retry cannot fix (AccessDenied) is retried less eagerly.
            cap = self._max_backoff if error.retryable else self._max_backoff * 5
            backoff = min(cap, 2.0 ** (stats.consecutive_failures - 1))
            stats.retry_at = now + backoff * (0.5 + self._jitter())
            retry = f"{stats.retry_at - now:.1f}s"
        log.log(
            logging.DEBUG if repeat else logging.WARNING,
            "failed profile=%s %s code=%s retry_in=%s: %s",
            hop.profile,
            _what(hop),
            error.code,
            retry,
            error.message,
        )

    def _warn_stale(self, hop: Hop, entry: CacheEntry) -> None:
        if not entry.warned_stale:
            entry.warned_stale = True
            expiration = entry.credentials.expiration or 0.0
            log.warning(
                "stale profile=%s %s: refresh failing, serving cached credentials until %s",
                hop.profile,
                _what(hop),
                format_expiration(entry.servable_until if expiration else 0.0),
            )


def _what(hop: Hop) -> str:
    role_arn = getattr(hop, "role_arn", None)
    return f"role={role_arn}" if role_arn else f"source={type(hop).__name__}"
