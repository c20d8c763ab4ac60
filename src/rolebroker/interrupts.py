"""Signals turned into exceptions for a while, so that a clean-up runs (light: the CLI and the
demo share it)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def raising_on(error: type[BaseException], *signals: signal.Signals) -> Iterator[None]:
    """Inside, each of ``signals`` raises ``error(NAME)`` in the main thread, so ``finally``
    blocks run as for Ctrl-C; the handlers found are restored on the way out."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise error(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
