"""The error catalogue: what reaches a client besides the JSON body."""

from __future__ import annotations

from rolebroker.errors import MAX_RETRY_AFTER, StsRefused, StsUnavailable


def test_retry_after_tells_the_backoff_but_never_a_long_sleep() -> None:
    # aws-sdk-js v2 sleeps for Retry-After between attempts: a 60 s backoff must not
    # become minutes of a hanging client.
    assert StsUnavailable("down", retry_after=0.2).headers() == {"Retry-After": "1"}
    assert StsUnavailable("down", retry_after=1.5).headers() == {"Retry-After": "2"}
    assert StsUnavailable("down", retry_after=60).headers() == {"Retry-After": str(MAX_RETRY_AFTER)}
    assert StsRefused("no").headers() == {}
