"""What an MFA code looks like, for the daemon (mfa.py, POST /mfa) and ``rolebroker mfa``.

Its own module so that the CLI checks a code without importing the daemon's MFA watcher
(asyncio, cachetools).
"""

from __future__ import annotations

import re

_CODE = re.compile(r"[0-9]{6}")


def valid_code(code: str) -> bool:
    """Six ASCII digits, as every TOTP device and STS expect."""
    return _CODE.fullmatch(code) is not None
