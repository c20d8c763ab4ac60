"""Renews the credentials of recently used profiles before any client asks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from rolebroker.cache import CredentialCache
from rolebroker.hops import Hop, chain_of

log = logging.getLogger("rolebroker")


class Refresher:
    """Each tick walks the chains of the profiles worth keeping warm and starts a
    background fetch (single flight, shared with requests) for every hop that is due,
    missing, or past its retry backoff. Ticks do no I/O of their own."""

    def __init__(
        self,
        cache: CredentialCache,
        targets: Callable[[], Iterable[Hop]],
        *,
        interval: float = 1.0,
    ) -> None:
        self._cache = cache
        self._targets = targets
        self._interval = interval

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

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.tick()
            except Exception:  # the refresher must outlive any bug in one profile
                log.exception("refresher tick failed")
