"""The daemon's state: the current profile snapshot, the cache and the refresher."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from rolebroker import __version__
from rolebroker.cache import Clock, CredentialCache
from rolebroker.config import Settings
from rolebroker.credentials import Credentials, format_expiration
from rolebroker.errors import BrokerError, ConfigFileError, ProfileNotFound
from rolebroker.profiles import ProfileCatalog
from rolebroker.providers import CredentialProvider, chain_of
from rolebroker.refresher import Refresher
from rolebroker.timing import RefreshTiming

log = logging.getLogger("rolebroker")

CatalogLoader = Callable[[], ProfileCatalog]


class Broker:
    def __init__(
        self,
        settings: Settings,
        *,
        load_catalog: CatalogLoader = ProfileCatalog.load,
        clock: Clock = time.time,
        refresh_interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self._load_catalog = load_catalog
        self._clock = clock
        self._started_at = clock()
        self.cache = CredentialCache(RefreshTiming(refresh_before=settings.refresh_before), clock=clock)
        self._refresher = Refresher(self.cache, self._warm_targets, interval=refresh_interval)
        self._catalog: ProfileCatalog | None = None
        self._catalog_error: BrokerError | None = None
        self._last_used: dict[str, float] = {}
        self._reload_lock = asyncio.Lock()
        self._refresher_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload(reason="start")
        self._refresher_task = asyncio.get_running_loop().create_task(self._refresher.run(), name="refresher")

    async def stop(self) -> None:
        if self._refresher_task is not None:
            self._refresher_task.cancel()
            await asyncio.gather(self._refresher_task, return_exceptions=True)

    async def reload(self, *, reason: str = "reload") -> bool:
        """Re-read the AWS config. Keeps cached credentials of every hop whose definition
        did not change (same key); a broken file keeps the previous snapshot."""
        async with self._reload_lock:
            try:
                catalog = await asyncio.to_thread(self._load_catalog)
            except BrokerError as exc:
                self._catalog_error = exc
                log.error("config %s failed code=%s: %s", reason, exc.code, exc.message)
                return False
            previous = self._catalog
            self._catalog, self._catalog_error = catalog, None
            if previous is None:
                log.info(
                    "loaded %d AWS profiles from %s",
                    len(catalog.profiles),
                    ", ".join(map(str, catalog.paths)),
                )
                return True
            keep = {hop.key for hop in self._hops(catalog)}
            before = {hop.key for hop in self._hops(previous)}
            self.cache.forget(keep)
            log.info(
                "reloaded %d AWS profiles (%s): %d hops kept, %d new",
                len(catalog.profiles),
                reason,
                len(keep & before),
                len(keep - before),
            )
            return True

    # -- serving -----------------------------------------------------------------------

    def provider(self, profile: str) -> CredentialProvider:
        if self._catalog is None:
            raise self._catalog_error or ConfigFileError("the AWS config has not been loaded yet; retry")
        return self._catalog.provider(profile)

    async def credentials(self, profile: str) -> Credentials:
        try:
            provider = self.provider(profile)
        except (ProfileNotFound, ConfigFileError):
            provider = await self._provider_after_reload(profile)
        self._last_used[profile] = self._clock()
        return self.cache.peek(provider) or await self.cache.get(provider, wait=self.settings.request_timeout)

    async def _provider_after_reload(self, profile: str) -> CredentialProvider:
        """A profile added (or a config fixed) since start works without a reload."""
        catalog = self._catalog
        if catalog is None or await asyncio.to_thread(catalog.changed_on_disk):
            await self.reload(reason=f"request for {profile}")
        return self.provider(profile)

    def _warm_targets(self) -> Iterator[CredentialProvider]:
        horizon = self._clock() - self.settings.keep_warm
        for name, used in list(self._last_used.items()):
            if used < horizon:
                del self._last_used[name]
                continue
            try:
                yield self.provider(name)
            except BrokerError:
                continue

    def _hops(self, catalog: ProfileCatalog) -> Iterator[CredentialProvider]:
        for name in catalog.names():
            try:
                yield from chain_of(catalog.provider(name))
            except BrokerError:
                continue

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything a human needs to see why a profile fails. Never a secret."""
        now = self._clock()
        catalog = self._catalog
        profiles = [self._profile_status(name, now) for name in (catalog.names() if catalog else [])]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": int(now - self._started_at),
            "listen": self.settings.base_url,
            "refresh_before_seconds": self.settings.refresh_before,
            "aws_config_files": [str(p) for p in catalog.paths] if catalog else [],
            "config_error": self._catalog_error.to_json() if self._catalog_error else None,
            "sts_calls_total": self.cache.sts_calls(),
            "profiles": profiles,
        }

    def _profile_status(self, name: str, now: float) -> dict[str, Any]:
        used = self._last_used.get(name)
        row: dict[str, Any] = {"name": name, "last_used": _stamp(used), "kept_warm": used is not None}
        try:
            provider = self.provider(name)
        except BrokerError as exc:
            return {**row, "state": "error", "cached": False, "last_error": exc.to_json()}
        stats = self.cache.stats(provider)
        entry = self.cache.entry(provider)
        expiration = entry.credentials.expiration if entry else None
        hops = chain_of(provider)
        failing = next(
            (self.cache.stats(h) for h in reversed(hops) if self.cache.stats(h).consecutive_failures), None
        )
        if self.cache.in_flight(provider):
            state = "refreshing"
        elif entry is not None and now < entry.refresh_at:
            state = "fresh"
        elif entry is not None:
            state = "stale"
        elif failing is not None:
            state = "error"
        else:
            state = "cold"
        last_error = failing.last_error if failing else None
        return {
            **row,
            "state": state,
            "cached": entry is not None,
            "role_arn": getattr(provider, "role_arn", None),
            "chain": [h.label for h in hops],
            "expires_at": _stamp(expiration),
            "expires_in_seconds": int(expiration - now) if expiration else None,
            "refresh_at": _stamp(entry.refresh_at) if entry else None,
            "last_refresh": _stamp(stats.last_refresh),
            "last_error": (
                {**last_error.to_json(), "at": _stamp(failing.last_error_at) if failing else None}
                if last_error
                else None
            ),
            "sts_calls": sum(s.fetches for s in map(self.cache.stats, hops) if s.calls_sts),
        }


def _stamp(epoch: float | None) -> str | None:
    return format_expiration(epoch) if epoch is not None and epoch != float("inf") else None
