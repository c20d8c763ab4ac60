"""Serving: a profile resolved to the top hop of its chain, its credentials from the cache,
and the MFA code hand-off. Reloading lives in reloader.py, live settings in livesettings.py."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rolebroker.cache import Clock, CredentialCache
from rolebroker.config import Settings, load_settings
from rolebroker.credentials import Credentials, format_expiration
from rolebroker.errors import BrokerError, ConfigFileError, MfaNotConfigured, MfaRequired, ProfileNotFound
from rolebroker.hops import Hop, MfaSessionHop
from rolebroker.livesettings import LiveSettings
from rolebroker.mfa import MfaWatcher, mfa_session_of
from rolebroker.profiles import ProfileCatalog
from rolebroker.refresher import MAX_SLEEP, Refresher
from rolebroker.reloader import CatalogLoader, Reloader
from rolebroker.statusdoc import StatusDoc
from rolebroker.statusview import build_status
from rolebroker.warmset import WarmFile, WarmSet

log = logging.getLogger("rolebroker")


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
        self.live = LiveSettings(settings)
        """The one holder of the current settings: the cache and the MFA watcher read it too."""
        self._clock = clock
        self._started_at = clock()
        self.cache = CredentialCache(self.live, clock=clock)
        self._reloader = Reloader(
            self.live, self.cache, load_catalog=load_catalog, load_settings=reload_settings
        )
        self._refresher = Refresher(self.cache, self._warm_targets, clock=clock, max_sleep=max_sleep)
        self.mfa = MfaWatcher(
            self.cache, self._warm_targets, settings=self.live, clock=clock, max_sleep=max_sleep
        )
        self.cache.on_landed = self._wake_background
        self._last_used: dict[str, float] = {}
        self._requests: collections.Counter[str] = collections.Counter()
        self._refresher_task: asyncio.Task[None] | None = None
        self._mfa_task: asyncio.Task[None] | None = None
        # Profiles used before the last stop, warmed at start (names and times only).
        self._warm = WarmSet(WarmFile(warm_file), lambda: self._last_used, clock=clock) if warm_file else None
        self._warm_task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> Settings:
        return self.live.settings

    # What status() shows of the last reload.

    @property
    def _catalog(self) -> ProfileCatalog | None:
        return self._reloader.catalog

    @property
    def _catalog_error(self) -> BrokerError | None:
        return self._reloader.catalog_error

    @property
    def _settings_error(self) -> str | None:
        return self._reloader.settings_error

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
        """SIGHUP, POST /reload and start: see Reloader.reload. Background work is woken, so
        a reload's new hops and settings are looked at without waiting for a deadline."""
        reloaded = await self._reloader.reload(reason=reason, reread_settings=reread_settings)
        self._wake_background()
        return reloaded

    # -- serving -----------------------------------------------------------------------

    def hop(self, profile: str) -> Hop:
        catalog = self._reloader.catalog
        if catalog is None:
            raise self._reloader.catalog_error or ConfigFileError(
                "the AWS config has not been loaded yet; retry"
            )
        return catalog.hop(profile)

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
        return await self._reloader.reload_if_changed(f"request for {profile!r}")

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

    def profile_count(self) -> int:
        return len(self._catalog.profiles) if self._catalog else 0

    def config_error(self) -> BrokerError | None:
        return self._reloader.catalog_error

    # -- status ------------------------------------------------------------------------

    def status(self) -> StatusDoc:
        """The /status document (statusview.py). Never a secret."""
        return build_status(self)


def _stamp(epoch: float | None) -> str | None:
    return format_expiration(epoch) if epoch is not None and epoch != float("inf") else None
