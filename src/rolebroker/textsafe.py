"""Text that came from outside (a request, a caller's process, upstream) made safe to print
on one line: it can neither end a log line nor drive the terminal.

Light on purpose (``re`` only): the daemon's log formatter, the audit reader and the CLI's
``status`` share it, and the CLI must not pay for ``logging`` to print a table.
"""

from __future__ import annotations

import re

_INVISIBLE = "\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_INVISIBLE}]")
"""C0 and C1 controls (CR, LF, ESC...), DEL, line/paragraph separators, bidi overrides."""
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_INVISIBLE}]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` on one line, every control character written as ``\\xNN``."""
    return _UNSAFE.sub(_escaped, text)


def escape_keeping_lines(text: str) -> str:
    """Like :func:`escape`, but line breaks stay (tracebacks, stack dumps)."""
    return _UNSAFE_BUT_NEWLINE.sub(_escaped, text)
