"""Renews the credentials of recently used profiles before any client asks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from rolebroker.cache import Clock, CredentialCache
from rolebroker.hops import Hop, chain_of

log = logging.getLogger("rolebroker")

MAX_SLEEP = 30.0
"""The longest the refresher sleeps without looking: the loop's clock stops during a
suspend while credentials keep ageing, so a deadline is re-checked at least this often."""


class Refresher:
    """Each tick walks the chains of the profiles worth keeping warm and starts a
    background fetch (single flight, shared with requests) for every hop that is due,
    missing, or past its retry backoff. Ticks do no I/O of their own.

    Between ticks it sleeps until the next deadline (a hop's refresh_at or retry_at),
    or until :meth:`wake`: a profile newly used, a flight landed, a reload."""

    def __init__(
        self,
        cache: CredentialCache,
        targets: Callable[[], Iterable[Hop]],
        *,
        clock: Clock = time.time,
        max_sleep: float = MAX_SLEEP,
    ) -> None:
        self._cache = cache
        self._targets = targets
        self._clock = clock
        self._max_sleep = max_sleep
        self._wake: asyncio.Event | None = None

    def tick(self) -> int:
        started = 0
        seen: set[str] = set()
        for top in self._targets():
            for hop in chain_of(top):
                if hop.key in seen:
                    continue
                seen.add(hop.key)
                if self._cache.refresh_due(hop):
                    started += 1
        return started

    def next_deadline(self) -> float:
        """When the next tick has work: the earliest refresh_at of a cached hop, or retry_at
        of an uncached one. Hops in flight are left out (their landing wakes the loop), and
        so is a hop waiting for its source's backoff (the source's retry_at counts)."""
        now = self._clock()
        deadline = float("inf")
        seen: set[str] = set()
        for top in self._targets():
            for hop in chain_of(top):
                if hop.key in seen or self._cache.in_flight(hop):
                    continue
                seen.add(hop.key)
                entry = self._cache.entry(hop)
                due = max(entry.refresh_at if entry else 0.0, self._cache.stats(hop).retry_at)
                if due <= now:
                    continue  # refresh_due() just declined it: a source is backing off
                deadline = min(deadline, due)
        return deadline

    def wake(self) -> None:
        """Look now rather than at the next deadline."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            try:
                self.tick()
                pause = self.next_deadline() - self._clock()
            except Exception:  # the refresher must outlive any bug in one profile
                log.exception("refresher tick failed")
                pause = 1.0
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives as the event is set, and stop() would then wait for ever.
                async with asyncio.timeout(min(max(pause, 0.0), self._max_sleep)):
                    await self._wake.wait()
            self._wake.clear()
