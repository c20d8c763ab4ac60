"""The one fake clock for in-process tests: time moves only when the test says so."""

from __future__ import annotations


class FakeClock:
    """Epoch seconds (like ``time.time``) that only :meth:`advance` moves."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
