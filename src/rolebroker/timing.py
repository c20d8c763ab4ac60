"""When to refresh, and until when cached credentials may still be served.

Pure functions of times so that they can be tested with any clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from rolebroker.credentials import Credentials


@dataclass(frozen=True, slots=True)
class RefreshTiming:
    refresh_before: float = 1200.0
    """Refresh this many seconds before expiry. botocore re-fetches on every call once fewer
    than 15 min remain, so the default 20 min keeps every SDK on fresh credentials."""

    serve_floor: float = 300.0
    """Never serve credentials with less than this left (capped at a quarter of the lifetime)."""

    min_fresh: float = 5.0
    """Credentials that arrive with less than this left are refused, not served: a client
    could not even use them once (a broken credential_process, a skewed clock, a proxy)."""

    def fresh_enough(self, now: float, credentials: Credentials) -> bool:
        """Whether credentials just obtained upstream may be cached and served at all."""
        return credentials.expiration is None or credentials.expiration - now > self.min_fresh

    def refresh_at(self, issued_at: float, credentials: Credentials) -> float:
        """Sessions no longer than ``refresh_before`` refresh at half life, so STS is never
        called in a loop."""
        if credentials.expiration is None:
            return float("inf")
        lifetime = credentials.expiration - issued_at
        if lifetime > self.refresh_before:
            return credentials.expiration - self.refresh_before
        return issued_at + max(lifetime, 0.0) / 2

    def servable_until(self, issued_at: float, credentials: Credentials) -> float:
        if credentials.expiration is None:
            return float("inf")
        lifetime = max(credentials.expiration - issued_at, 0.0)
        return credentials.expiration - min(self.serve_floor, lifetime / 4)
