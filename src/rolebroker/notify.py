"""Desktop notifications: a nudge for a human when a profile waits for them. Optional:
without ``notify-send`` nothing happens, and no failure is ever reported."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable

NOTIFY_TIMEOUT = 5.0

Notifier = Callable[[str, str], None]
"""``(title, body)``; blocking, so callers run it in a worker thread."""


def desktop_notify(title: str, body: str) -> None:
    """A desktop notification when ``notify-send`` exists; failures are ignored."""
    exe = shutil.which("notify-send")
    if exe is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [exe, "--app-name=rolebroker", title, body],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=NOTIFY_TIMEOUT,
            check=False,
        )
