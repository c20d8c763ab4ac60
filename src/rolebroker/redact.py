"""Text from upstream (STS error messages, credential_process errors) made safe to show.

A proxy or a broken endpoint may echo the request back, Authorization header and session
token included, and a credential_process may print anything: such text is redacted and
bounded before it reaches a client, /status or a log. The audit log scrubs what callers
show (command lines, user agents) with it too. Light on purpose (``re`` only): the hops and
the audit writer share it, and neither pulls the other in.
"""

from __future__ import annotations

import re

MAX_UPSTREAM_TEXT = 300
"""Characters of upstream text kept in one message."""

_REDACTED = "<redacted>"
_PATTERNS = (
    # key=value pairs naming a secret: Signature=..., X-Amz-Security-Token: ..., "SecretAccessKey": "..."
    re.compile(
        r"(?i)((?:signature|security-?token|session-?token|secret[-_]?(?:access[-_]?)?key|password"
        r"|authorization|\btoken)[\"']?\s*[=:]\s*[\"']?)[^\s,;&\"'<>]+"
    ),
    # access key ids: AKIA..., ASIA... (the first part of a Credential= scope)
    re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{12,}\b()"),
    # long base64 or hex runs: secret keys (40), session tokens (hundreds), signatures (64 hex)
    re.compile(r"[A-Za-z0-9+/]{32,}={0,2}()"),
)


def redact(text: str, *, limit: int = MAX_UPSTREAM_TEXT) -> str:
    """``text`` on one line, without anything that looks like a credential, at most ``limit`` chars."""
    cleaned = " ".join(str(text).split())
    for pattern in _PATTERNS:
        cleaned = pattern.sub(lambda m: (m.group(1) or "") + _REDACTED, cleaned)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3].rstrip() + "..."
    return cleaned
