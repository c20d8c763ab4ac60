"""The daemon's state: the current profile snapshot, the cache and the refresher."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rolebroker.cache import Clock, CredentialCache
from rolebroker.config import LIVE_SETTINGS, Settings, SettingsError, apply_settings, load_settings
from rolebroker.credentials import Credentials, format_expiration
from rolebroker.errors import BrokerError, ConfigFileError, MfaNotConfigured, MfaRequired, ProfileNotFound
from rolebroker.hops import Hop, MfaSessionHop, chain_of
from rolebroker.mfa import MfaWatcher, mfa_session_of
from rolebroker.profiles import ProfileCatalog
from rolebroker.refresher import MAX_SLEEP, Refresher
from rolebroker.statusdoc import StatusDoc
from rolebroker.statusview import build_status
from rolebroker.timing import RefreshTiming
from rolebroker.warmset import WarmFile, WarmSet

log = logging.getLogger("rolebroker")

CatalogLoader = Callable[[], ProfileCatalog]


class Broker:
    def __init__(
        self,
        settings: Settings,
        *,
        load_catalog: CatalogLoader = ProfileCatalog.load,
        reload_settings: Callable[[], Settings] = load_settings,
        clock: Clock = time.time,
        max_sleep: float = MAX_SLEEP,
        warm_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self._load_catalog = load_catalog
        # Re-reads env and config.toml on reload, with serve's flags applied by the caller.
        self._load_settings = reload_settings
        # The settings as last read: one that differs from them was given as a flag (or by
        # systemd's socket), and such settings keep winning over the file.
        self._settings_baseline: Settings | None = None
        self._settings_error: str | None = None
        self._clock = clock
        self._started_at = clock()
        self.cache = CredentialCache(RefreshTiming(refresh_before=settings.refresh_before), clock=clock)
        self._refresher = Refresher(self.cache, self._warm_targets, clock=clock, max_sleep=max_sleep)
        self.mfa = MfaWatcher(
            self.cache,
            self._warm_targets,
            settings=lambda: self.settings,
            clock=clock,
            max_sleep=max_sleep,
        )
        self.cache.on_landed = self._wake_background
        self._catalog: ProfileCatalog | None = None
        self._catalog_error: BrokerError | None = None
        self._last_used: dict[str, float] = {}
        self._requests: collections.Counter[str] = collections.Counter()
        self._reload_lock = asyncio.Lock()
        self._refresher_task: asyncio.Task[None] | None = None
        self._mfa_task: asyncio.Task[None] | None = None
        # Profiles used before the last stop, warmed at start (names and times only).
        self._warm = WarmSet(WarmFile(warm_file), lambda: self._last_used, clock=clock) if warm_file else None
        self._warm_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload(reason="start")
        if self._warm is not None:
            known = self._catalog.names() if self._catalog else None
            self._last_used.update(await self._warm.restore(keep_warm=self.settings.keep_warm, known=known))
            try:
                self._refresher.tick()  # fetch them now, before any client asks
            except Exception:
                log.exception("warming the profiles used before the last stop failed")
            self._warm_task = asyncio.get_running_loop().create_task(self._warm.run(), name="warm-set")
        self._refresher_task = asyncio.get_running_loop().create_task(self._refresher.run(), name="refresher")
        self._mfa_task = asyncio.get_running_loop().create_task(self.mfa.run(), name="mfa-watcher")

    async def stop(self) -> None:
        if self._refresher_task is not None:
            self._refresher_task.cancel()
            await asyncio.gather(self._refresher_task, return_exceptions=True)
        if self._mfa_task is not None:
            self._mfa_task.cancel()
            await asyncio.gather(self._mfa_task, return_exceptions=True)
        await self.mfa.stop()
        if self._warm is not None:
            if self._warm_task is not None:
                self._warm_task.cancel()
                await asyncio.gather(self._warm_task, return_exceptions=True)
            await self._warm.flush()

    async def reload(self, *, reason: str = "reload", reread_settings: bool = True) -> bool:
        """Re-read the AWS config. Keeps cached credentials of every hop whose definition
        did not change (same key); a broken file keeps the previous snapshot.
        Also re-reads rolebroker's own settings unless ``reread_settings`` is False."""
        async with self._reload_lock:
            if reread_settings:
                await self._reload_settings(reason)
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
            self._wake_background()
            log.info(
                "reloaded %d AWS profiles (%s): %d hops kept, %d new",
                len(catalog.profiles),
                reason,
                len(keep & before),
                len(keep - before),
            )
            return True

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
            self._settings_error = str(exc)
            log.error("settings %s failed: %s; keeping the current settings", reason, exc)
            return
        self._settings_error = None
        baseline, self._settings_baseline = self._settings_baseline, fresh
        if baseline is None:
            return  # the first read (at start) only records the baseline
        updated, restart = apply_settings(self.settings, baseline, fresh)
        for name in restart:
            log.warning(
                "settings %s: %s changed to %s; restart rolebroker to apply it",
                reason,
                name,
                getattr(fresh, name),
            )
        changed = [name for name in LIVE_SETTINGS if getattr(updated, name) != getattr(self.settings, name)]
        self.settings = updated
        if not changed:
            return
        self.cache.timing = dataclasses.replace(self.cache.timing, refresh_before=updated.refresh_before)
        level = int(logging.getLevelName(updated.log_level.upper()))
        log.setLevel(min(log.getEffectiveLevel(), level))  # the change itself always gets its line
        log.info("settings %s: %s", reason, ", ".join(f"{name}={getattr(updated, name)}" for name in changed))
        log.setLevel(level)

    # -- serving -----------------------------------------------------------------------

    def hop(self, profile: str) -> Hop:
        if self._catalog is None:
            raise self._catalog_error or ConfigFileError("the AWS config has not been loaded yet; retry")
        return self._catalog.hop(profile)

    async def credentials(self, profile: str) -> Credentials:
        top = await self._resolve(profile)
        self._note_use(profile)
        wait = self.settings.request_timeout
        try:
            try:
                return self.cache.peek(top) or await self.cache.get(top, wait=wait)
            except BrokerError as exc:
                # A hop failing on its configuration is not called again until the config
                # changes: an edited file is that change, so look (one stat) and retry once.
                if not exc.needs_config_change or not await self._reload_if_changed(profile):
                    raise
            top = self.hop(profile)
            return self.cache.peek(top) or await self.cache.get(top, wait=wait)
        except MfaRequired:
            raise self._mfa_required(profile, top) from None

    def warm_body(self, profile: str) -> bytes | None:
        """The fast path (server.Guard): the JSON body of ``profile``'s credentials when they
        need no refresh, or None, and then :meth:`credentials` answers, errors included."""
        catalog = self._catalog
        if catalog is None:
            return None
        try:
            top = catalog.hop(profile)
        except BrokerError:
            return None
        body = self.cache.peek_body(top)
        if body is not None:
            self._note_use(profile)
        return body

    def _note_use(self, profile: str) -> None:
        """Keeps ``profile`` warm; a name new to the warm set wakes the background loops."""
        if profile not in self._last_used:
            self._wake_background()
        self._last_used[profile] = self._clock()
        self._requests[profile] += 1
        if self._warm is not None:
            self._warm.touch()

    def _wake_background(self) -> None:
        self._refresher.wake()
        self.mfa.wake()

    async def _reload_if_changed(self, profile: str) -> bool:
        catalog = self._catalog
        if catalog is not None and not await asyncio.to_thread(catalog.changed_on_disk):
            return False
        return await self.reload(reason=f"request for {profile!r}", reread_settings=False)

    async def _resolve(self, profile: str) -> Hop:
        """The top hop of ``profile``'s chain; a profile added (or a config fixed) since start works
        without a reload: the files are re-read only on a miss, and only if they changed."""
        try:
            return self.hop(profile)
        except (ProfileNotFound, ConfigFileError):
            await self._reload_if_changed(profile)
            return self.hop(profile)

    # -- MFA ---------------------------------------------------------------------------------

    async def submit_mfa(self, profile: str, code: str) -> dict[str, Any]:
        """Spend a code handed in by ``rolebroker mfa`` on the MFA session of ``profile``'s chain."""
        hop = mfa_session_of(await self._resolve(profile))
        if hop is None:
            raise MfaNotConfigured(
                f"profile {profile!r} does not use MFA: no profile of its chain sets mfa_serial"
            )
        self._last_used[profile] = self._clock()
        credentials = await self.mfa.submit(hop, code)
        catalog = self._catalog
        sharing = [
            name
            for name in (catalog.names() if catalog else [profile])
            if (other := self._mfa_session_or_none(name)) is not None and other.key == hop.key
        ]
        return {
            "profile": profile,
            "mfa_serial": hop.mfa_serial,
            "expires_at": _stamp(credentials.expiration),
            "profiles": sharing,
        }

    def _mfa_session_or_none(self, name: str) -> MfaSessionHop | None:
        try:
            return mfa_session_of(self.hop(name))
        except BrokerError:
            return None

    def _mfa_required(self, profile: str, top: Hop) -> MfaRequired:
        """Name the profile the client asked for: any profile sharing the MFA session works."""
        self.mfa.wake()
        hop = mfa_session_of(top)
        if hop is not None and self.mfa.hook_pending(hop):
            return MfaRequired(
                f"profile {profile!r} waits for an MFA code for {hop.mfa_serial} from its mfa_process; "
                f"retry in a few seconds (or run: rolebroker mfa {profile})"
            )
        serial = f" for {hop.mfa_serial}" if hop is not None else ""
        return MfaRequired(f"profile {profile!r} needs an MFA code{serial}; run: rolebroker mfa {profile}")

    def _warm_targets(self) -> Iterator[Hop]:
        horizon = self._clock() - self.settings.keep_warm
        for name, used in list(self._last_used.items()):
            if used < horizon:
                del self._last_used[name]
                continue
            try:
                yield self.hop(name)
            except BrokerError:
                continue

    def _hops(self, catalog: ProfileCatalog) -> Iterator[Hop]:
        for name in catalog.names():
            try:
                yield from chain_of(catalog.hop(name))
            except BrokerError:
                continue

    def profile_count(self) -> int:
        return len(self._catalog.profiles) if self._catalog else 0

    def config_error(self) -> BrokerError | None:
        return self._catalog_error

    # -- status ------------------------------------------------------------------------

    def status(self) -> StatusDoc:
        """The /status document (statusview.py). Never a secret."""
        return build_status(self)


def _stamp(epoch: float | None) -> str | None:
    return format_expiration(epoch) if epoch is not None and epoch != float("inf") else None
