"""Re-reading the AWS config and rolebroker's own settings while the daemon runs.

A reload swaps the profile snapshot (keeping the cached credentials of every hop whose
definition did not change) and replaces the live settings in their one holder; a broken
file keeps the previous snapshot or settings and is reported in /status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from rolebroker.cache import CredentialCache
from rolebroker.config import LIVE_SETTINGS, Settings, SettingsError, apply_settings
from rolebroker.errors import BrokerError
from rolebroker.hops import Hop, chain_of
from rolebroker.livesettings import LiveSettings
from rolebroker.profiles import ProfileCatalog

log = logging.getLogger("rolebroker")

CatalogLoader = Callable[[], ProfileCatalog]
SettingsLoader = Callable[[], Settings]


class Reloader:
    """Owns the current ``ProfileCatalog`` and the errors of the last reads."""

    def __init__(
        self,
        live: LiveSettings,
        cache: CredentialCache,
        *,
        load_catalog: CatalogLoader,
        load_settings: SettingsLoader,
    ) -> None:
        self._live = live
        self._cache = cache
        self._load_catalog = load_catalog
        # Re-reads env and config.toml, with serve's flags applied by the caller.
        self._load_settings = load_settings
        # The settings as last read: one that differs from them was given as a flag (or by
        # systemd's socket), and such settings keep winning over the file.
        self._settings_baseline: Settings | None = None
        self._lock = asyncio.Lock()
        self.catalog: ProfileCatalog | None = None
        self.catalog_error: BrokerError | None = None
        self.settings_error: str | None = None

    async def reload(self, *, reason: str = "reload", reread_settings: bool = True) -> bool:
        """Re-read the AWS config. Keeps cached credentials of every hop whose definition
        did not change (same key); a broken file keeps the previous snapshot.
        Also re-reads rolebroker's own settings unless ``reread_settings`` is False."""
        async with self._lock:
            if reread_settings:
                await self._reload_settings(reason)
            try:
                catalog = await asyncio.to_thread(self._load_catalog)
            except BrokerError as exc:
                self.catalog_error = exc
                log.error("config %s failed code=%s: %s", reason, exc.code, exc.message)
                return False
            previous = self.catalog
            self.catalog, self.catalog_error = catalog, None
            if previous is None:
                log.info(
                    "loaded %d AWS profiles from %s",
                    len(catalog.profiles),
                    ", ".join(map(str, catalog.paths)),
                )
                return True
            keep = {hop.key for hop in _hops(catalog)}
            before = {hop.key for hop in _hops(previous)}
            self._cache.forget(keep)
            log.info(
                "reloaded %d AWS profiles (%s): %d hops kept, %d new",
                len(catalog.profiles),
                reason,
                len(keep & before),
                len(keep - before),
            )
            return True

    async def reload_if_changed(self, reason: str) -> bool:
        """Re-read the AWS config only if its files changed on disk (one stat each)."""
        catalog = self.catalog
        if catalog is not None and not await asyncio.to_thread(catalog.changed_on_disk):
            return False
        return await self.reload(reason=reason, reread_settings=False)

    def _read_settings(self) -> Settings:
        """Blocking (file I/O)."""
        fresh = self._load_settings()
        if not isinstance(logging.getLevelName(fresh.log_level.upper()), int):
            raise SettingsError(f"log_level {fresh.log_level!r} is not one of debug, info, warning, error")
        return fresh

    async def _reload_settings(self, reason: str) -> None:
        """config.toml and ROLEBROKER_*: what can change live does (refresh_before from each
        hop's next refresh on); host, port and token_file only log that a restart is needed."""
        try:
            fresh = await asyncio.to_thread(self._read_settings)
        except SettingsError as exc:
            self.settings_error = str(exc)
            log.error("settings %s failed: %s; keeping the current settings", reason, exc)
            return
        self.settings_error = None
        baseline, self._settings_baseline = self._settings_baseline, fresh
        if baseline is None:
            return  # the first read (at start) only records the baseline
        current = self._live.settings
        updated, restart = apply_settings(current, baseline, fresh)
        for name in restart:
            log.warning(
                "settings %s: %s changed to %s; restart rolebroker to apply it",
                reason,
                name,
                getattr(fresh, name),
            )
        changed = [name for name in LIVE_SETTINGS if getattr(updated, name) != getattr(current, name)]
        self._live.replace(updated)
        if not changed:
            return
        level = int(logging.getLevelName(updated.log_level.upper()))
        log.setLevel(min(log.getEffectiveLevel(), level))  # the change itself always gets its line
        log.info("settings %s: %s", reason, ", ".join(f"{name}={getattr(updated, name)}" for name in changed))
        log.setLevel(level)


def _hops(catalog: ProfileCatalog) -> Iterator[Hop]:
    for name in catalog.names():
        try:
            yield from chain_of(catalog.hop(name))
        except BrokerError:
            continue
