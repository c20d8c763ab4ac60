"""The one polling helper: wait, in bounded real time, for something another process does."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str = "the condition",
    *,
    step: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll ``check`` until it is truthy; raise ``TimeoutError`` naming ``what`` after
    ``timeout`` seconds. Exceptions in ``ignoring`` (say, connection refused while a
    server starts) just mean "not yet". Only for other processes: in-process timing
    uses :class:`tests.support.clock.FakeClock`."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*ignoring):
            if check():
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not true after {timeout:g}s")
        time.sleep(step)
