"""One line per event on stderr, readable in a terminal and in journald.

Every line is escaped once, here: a value that came from a request (a profile name, a
header) can neither end a log line nor drive the terminal. Repeated refusals go through
a LogThrottle so that a flood leaves a few lines, not one per request.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from rolebroker.textsafe import escape, escape_keeping_lines

_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _SafeFormatter(logging.Formatter):
    """Escapes the message; tracebacks keep their line breaks but lose every other control."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_keeping_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return escape_keeping_lines(super().formatStack(stack_info))


class _JournalFormatter(_SafeFormatter):
    """journald adds the time and unit; an ``<N>`` prefix carries the priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


class _TerminalFormatter(_SafeFormatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


class LogThrottle:
    """At most one line per kind and window; the next line of a kind counts the ones folded
    into it. Kinds are constants chosen by the caller (never request data), so the table
    stays as small as the code that uses it."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._window = window
        self._clock = clock
        self._quiet_until: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None while ``kind`` is quiet; else how many were folded since its last line."""
        now = self._clock()
        if now < self._quiet_until.get(kind, float("-inf")):
            self._folded[kind] = self._folded.get(kind, 0) + 1
            return None
        self._quiet_until[kind] = now + self._window
        return self._folded.pop(kind, 0)

    def suffix(self, folded: int) -> str:
        if folded:
            return f" ({folded} more since the last such line)"
        return f" (repeats are summarised once per {self._window:.0f}s)"

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log ``message`` unless a line of ``kind`` was logged within the window; True if logged."""
        folded = self.allow(kind)
        if folded is None:
            return False
        self._logger.log(level, message + self.suffix(folded), *args)
        return True


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_TerminalFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("rolebroker").setLevel(level.upper())
    # botocore at DEBUG would print request bodies; keep third parties quiet.
    for noisy in ("botocore", "boto3", "urllib3", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A missing SSO login is answered with SsoLoginRequired; botocore's own traceback for it
    # would only be noise.
    for chatty in ("botocore.tokens", "botocore.credentials"):
        logging.getLogger(chatty).setLevel(logging.ERROR)
