"""MFA out of band: the watcher that announces profiles waiting for a code and MFA sessions
about to expire, runs ``mfa_process`` hooks (mfahook.py) and spends handed-in codes.

No credential request ever waits for a human: a request for a locked profile gets
MfaRequired at once, and the code arrives on its own authenticated POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from rolebroker.cache import CacheEntry, Clock, CredentialCache
from rolebroker.credentials import Credentials, format_expiration
from rolebroker.errors import BrokerError, InvalidMfaCode
from rolebroker.hops import Hop, MfaSessionHop, chain_of
from rolebroker.livesettings import LiveSettings
from rolebroker.mfacode import valid_code
from rolebroker.mfahook import HOOK_TIMEOUT, MfaProcessError, kill_group, run_mfa_process
from rolebroker.notify import Notifier, desktop_notify
from rolebroker.refresher import MAX_SLEEP

log = logging.getLogger("rolebroker")

MFA_WARN_BEFORE = 3600.0
"""Warn this long before an MFA session ends (at most at half its life)."""


def mfa_session_of(hop: Hop) -> MfaSessionHop | None:
    return next((hop for hop in chain_of(hop) if isinstance(hop, MfaSessionHop)), None)


# -- the watcher --------------------------------------------------------------------------


@dataclass(slots=True)
class _Hook:
    failures: int = 0
    retry_at: float = 0.0
    task: asyncio.Task[None] | None = None


class MfaWatcher:
    """Keeps MFA out of the request path.

    Each tick looks at the MFA sessions of the profiles in use: it announces, once, that
    one is waiting for a code; warns, once per session, that one is about to expire; and
    runs the chain's ``mfa_process`` in a worker thread when a code is needed. Ticks do no
    I/O of their own.
    """

    def __init__(
        self,
        cache: CredentialCache,
        targets: Callable[[], Iterable[Hop]],
        *,
        settings: LiveSettings,
        clock: Clock = time.time,
        max_sleep: float = MAX_SLEEP,
        notify: Notifier | None = desktop_notify,
        hook_timeout: float = HOOK_TIMEOUT,
    ) -> None:
        self._cache = cache
        self._targets = targets
        self._live = settings
        """refresh_before and request_timeout can change on reload: read at each use."""
        self._clock = clock
        self._max_sleep = max_sleep
        self._notify = notify
        self._hook_timeout = hook_timeout
        self._processes: set[subprocess.Popen[str]] = set()
        self._waiting: set[str] = set()
        self._warned: dict[str, float] = {}
        self._hooks: dict[str, _Hook] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None

    # -- the code hand-off ----------------------------------------------------------------

    async def submit(self, hop: MfaSessionHop, code: str) -> Credentials:
        """Spend ``code`` on one GetSessionToken; every chain through ``hop`` then works."""
        if not valid_code(code):
            raise InvalidMfaCode(f"an MFA code is 6 digits; run: rolebroker mfa {hop.unlock_profile}")
        wait = self._live.settings.request_timeout
        credentials = await self._cache.renew(hop.with_code(code), wait=wait)
        self._waiting.discard(hop.key)
        log.info(
            "MFA session unlocked serial=%s expires=%s",
            hop.mfa_serial,
            format_expiration(credentials.expiration) if credentials.expiration else "never",
        )
        return credentials

    # -- status ---------------------------------------------------------------------------

    def warn_at(self, entry: CacheEntry) -> float:
        expiration = entry.credentials.expiration
        if expiration is None:
            return float("inf")
        lifetime = max(expiration - entry.issued_at, 0.0)
        warn_before = max(self._live.settings.refresh_before, MFA_WARN_BEFORE)
        return expiration - min(warn_before, lifetime / 2)

    def state(self, hop: MfaSessionHop, now: float) -> str:
        entry = self._cache.entry(hop)
        if entry is None:
            return "required"
        return "expiring" if now >= self.warn_at(entry) else "active"

    def status_fields(self, hops: Iterable[Hop], now: float) -> dict[str, Any]:
        """The MFA part of a profile's /status row (empty for chains without MFA)."""
        hop = next((h for h in hops if isinstance(h, MfaSessionHop)), None)
        if hop is None:
            return {}
        entry = self._cache.entry(hop)
        expiration = entry.credentials.expiration if entry else None
        hook = self._hooks.get(hop.key)
        return {
            "mfa_serial": hop.mfa_serial,
            "mfa_state": self.state(hop, now),
            "mfa_expires_at": format_expiration(expiration) if expiration else None,
            "mfa_expires_in_seconds": int(expiration - now) if expiration else None,
            "mfa_process": bool(hop.mfa_process),
            "mfa_process_running": bool(hook and hook.task and not hook.task.done()),
        }

    def hook_pending(self, hop: MfaSessionHop) -> bool:
        """Whether ``mfa_process`` is running or about to run (not backing off after failing)."""
        if not hop.mfa_process:
            return False
        hook = self._hooks.get(hop.key)
        if hook is None or (hook.task is not None and not hook.task.done()):
            return True
        return self._clock() >= hook.retry_at

    # -- the loop -------------------------------------------------------------------------

    def wake(self) -> None:
        """A request just met a locked profile: look now rather than at the next tick."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Ticks, then sleeps until the next deadline or a :meth:`wake` (a locked profile
        met, a fetch landed, a hook finished, a reload)."""
        self._wake = asyncio.Event()
        while True:
            try:
                self.tick()
                pause = self.next_deadline() - self._clock()
            except Exception:  # the watcher must outlive any bug in one profile
                log.exception("MFA watcher tick failed")
                pause = 1.0
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives as the event is set, and stop() would then wait for ever.
                async with asyncio.timeout(min(max(pause, 0.0), self._max_sleep)):
                    await self._wake.wait()
            self._wake.clear()

    def next_deadline(self) -> float:
        """When a tick next has news: a session reaching its warning time or ending, or a
        failed mfa_process due for a retry. Past times are left out: the tick just saw them."""
        now = self._clock()
        times: list[float] = []
        for top in self._targets():
            hop = mfa_session_of(top)
            if hop is None:
                continue
            entry = self._cache.entry(hop)
            if entry is not None:
                times += (self.warn_at(entry), entry.servable_until)
            hook = self._hooks.get(hop.key)
            if hop.mfa_process and hook is not None:
                times.append(hook.retry_at)
        return min((t for t in times if t > now), default=float("inf"))

    async def stop(self) -> None:
        """Kills running hooks too: a hook waiting for a key touch must not hold up shutdown."""
        for proc in list(self._processes):
            kill_group(proc)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def tick(self) -> None:
        now = self._clock()
        sessions: dict[str, tuple[MfaSessionHop, list[str]]] = {}
        for top in self._targets():
            hop = mfa_session_of(top)
            if hop is not None:
                sessions.setdefault(hop.key, (hop, []))[1].append(top.profile)
        for key, (hop, profiles) in sessions.items():
            entry = self._cache.entry(hop)
            if entry is None:
                self._announce_waiting(hop, profiles)
            else:
                self._waiting.discard(key)
                if now < self.warn_at(entry):
                    continue
                self._warn_expiring(hop, entry, profiles, now)
            if hop.mfa_process:
                self._maybe_run_hook(hop, now)

    def _announce_waiting(self, hop: MfaSessionHop, profiles: list[str]) -> None:
        if hop.key in self._waiting:
            return
        self._waiting.add(hop.key)
        names = ", ".join(sorted(set(profiles)))
        if hop.mfa_process:
            log.info("MFA code needed serial=%s profiles=%s: running its mfa_process", hop.mfa_serial, names)
            return
        log.warning(
            "waiting for an MFA code serial=%s profiles=%s; run: rolebroker mfa %s",
            hop.mfa_serial,
            names,
            profiles[0],
        )
        self._send_notification(
            "rolebroker: MFA code needed", f"profiles {names} are waiting; run: rolebroker mfa {profiles[0]}"
        )

    def _warn_expiring(self, hop: MfaSessionHop, entry: CacheEntry, profiles: list[str], now: float) -> None:
        if self._warned.get(hop.key) == entry.issued_at:
            return
        self._warned[hop.key] = entry.issued_at
        expiration = entry.credentials.expiration or now
        names = ", ".join(sorted(set(profiles)))
        log.warning(
            "MFA session serial=%s expires at %s (in %ds); profiles %s then stop renewing; "
            "run: rolebroker mfa %s",
            hop.mfa_serial,
            format_expiration(expiration),
            expiration - now,
            names,
            profiles[0],
        )
        if not hop.mfa_process:
            self._send_notification(
                "rolebroker: MFA session expiring",
                f"expires at {format_expiration(expiration)}; run: rolebroker mfa {profiles[0]}",
            )

    # -- background work ------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self.wake())  # a failed hook has a retry time now
        return task

    def _send_notification(self, title: str, body: str) -> None:
        if self._notify is not None:
            self._spawn(asyncio.to_thread(self._notify, title, body), "notify")

    def _maybe_run_hook(self, hop: MfaSessionHop, now: float) -> None:
        hook = self._hooks.setdefault(hop.key, _Hook())
        if (hook.task is not None and not hook.task.done()) or now < hook.retry_at:
            return
        hook.task = self._spawn(self._hook(hop, hook), f"mfa_process {hop.mfa_serial}")

    async def _hook(self, hop: MfaSessionHop, hook: _Hook) -> None:
        command = hop.mfa_process or ""
        try:
            code = await asyncio.to_thread(run_mfa_process, command, self._hook_timeout, self._processes.add)
        except MfaProcessError as exc:
            self._hook_failed(hop, hook, f"mfa_process failed: {exc}")
            return
        finally:
            self._processes.difference_update([p for p in list(self._processes) if p.poll() is not None])
        try:
            await self.submit(hop, code)
        except BrokerError as exc:
            self._hook_failed(hop, hook, f"the code from mfa_process did not work: {exc.code}")
            return
        hook.failures, hook.retry_at = 0, 0.0

    def _hook_failed(self, hop: MfaSessionHop, hook: _Hook, why: str) -> None:
        hook.failures += 1
        pause = min(300.0, 15.0 * 2 ** (hook.failures - 1))
        hook.retry_at = self._clock() + pause
        log.warning(
            "%s serial=%s retry_in=%ds; or run: rolebroker mfa %s",
            why,
            hop.mfa_serial,
            pause,
            hop.unlock_profile,
        )
        if hook.failures == 1:
            self._send_notification(
                "rolebroker: mfa_process failed", f"run: rolebroker mfa {hop.unlock_profile}"
            )
