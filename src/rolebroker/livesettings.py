"""The settings that can change while the daemon runs, in one holder.

The broker, the cache and the MFA watcher are handed the same ``LiveSettings`` and read
the current value from it when they need it; a reload replaces that value here and
nowhere else, so no component keeps a stale copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rolebroker.config import Settings
from rolebroker.timing import RefreshTiming


@dataclass(frozen=True, slots=True)
class _Current:
    settings: Settings
    timing: RefreshTiming


class LiveSettings:
    """The current ``Settings`` and the ``RefreshTiming`` derived from them (its
    ``refresh_before`` is the setting's; its other fields are fixed at construction)."""

    __slots__ = ("_base_timing", "_current")

    def __init__(self, settings: Settings, *, timing: RefreshTiming | None = None) -> None:
        self._base_timing = timing or RefreshTiming()
        self._current = self._derive(settings)

    @classmethod
    def of_timing(cls, timing: RefreshTiming) -> LiveSettings:
        """Default settings around ``timing``: for a cache used on its own (tests, tools)."""
        return cls(Settings(refresh_before=timing.refresh_before), timing=timing)

    @property
    def settings(self) -> Settings:
        return self._current.settings

    @property
    def timing(self) -> RefreshTiming:
        return self._current.timing

    def replace(self, settings: Settings) -> None:
        """The one place a reload changes what every holder reads (one assignment)."""
        self._current = self._derive(settings)

    def _derive(self, settings: Settings) -> _Current:
        timing = dataclasses.replace(self._base_timing, refresh_before=settings.refresh_before)
        return _Current(settings, timing)
