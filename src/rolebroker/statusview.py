"""The daemon's side of ``GET /status``: the broker's state as a typed StatusDoc.

Everything a human needs to see why a profile fails, never a secret (names, states,
times and error messages only). Kept out of broker.py, which serves credentials.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rolebroker import __version__
from rolebroker.credentials import format_expiration
from rolebroker.errors import BrokerError
from rolebroker.hops import chain_of
from rolebroker.statusdoc import ErrorInfo, MfaStatus, ProfileStatus, StatusDoc

if TYPE_CHECKING:
    from rolebroker.broker import Broker


def build_status(broker: Broker) -> StatusDoc:
    now = broker._clock()
    catalog = broker._catalog
    catalog_error = broker.config_error()
    return StatusDoc(
        version=__version__,
        pid=os.getpid(),
        uptime_seconds=int(now - broker._started_at),
        listen=broker.settings.base_url,
        refresh_before_seconds=broker.settings.refresh_before,
        aws_config_files=tuple(str(p) for p in catalog.paths) if catalog else (),
        config_error=ErrorInfo.with_time(catalog_error.to_json(), None) if catalog_error else None,
        settings_error=broker._settings_error,
        sts_calls_total=broker.cache.sts_calls(),
        profiles=tuple(profile_status(broker, name, now) for name in (catalog.names() if catalog else [])),
    )


def profile_status(broker: Broker, name: str, now: float) -> ProfileStatus:
    used = broker._last_used.get(name)
    requests = broker._requests[name]
    try:
        top = broker.hop(name)
    except BrokerError as exc:
        return ProfileStatus(
            name=name,
            state="error",
            requests=requests,
            last_used=_stamp(used),
            kept_warm=used is not None,
            last_error=ErrorInfo.with_time(exc.to_json(), None),
        )
    cache = broker.cache
    stats = cache.stats(top)
    entry = cache.entry(top)
    expiration = entry.credentials.expiration if entry else None
    hops = chain_of(top)
    failing = next((cache.stats(h) for h in reversed(hops) if cache.stats(h).consecutive_failures), None)
    if cache.in_flight(top):
        state = "refreshing"
    elif entry is not None and now < entry.refresh_at:
        state = "fresh"
    elif entry is not None:
        state = "stale"
    elif failing is not None:
        state = "error"
    else:
        state = "cold"
    mfa = MfaStatus.from_json(broker.mfa.status_fields(hops, now))
    if mfa is not None and mfa.state == "required" and state in ("cold", "error", "stale"):
        state = "mfa_required"
    last_error = failing.last_error if failing else None
    return ProfileStatus(
        name=name,
        state=state,
        requests=requests,
        last_used=_stamp(used),
        kept_warm=used is not None,
        cached=entry is not None,
        role_arn=getattr(top, "role_arn", None),
        chain=tuple(h.label for h in hops),
        expires_at=_stamp(expiration),
        expires_in_seconds=int(expiration - now) if expiration else None,
        refresh_at=_stamp(entry.refresh_at) if entry else None,
        last_refresh=_stamp(stats.last_refresh),
        last_error=(
            ErrorInfo.with_time(last_error.to_json(), _stamp(failing.last_error_at) if failing else None)
            if last_error
            else None
        ),
        sts_calls=sum(s.fetches for s in map(cache.stats, hops) if s.calls_sts),
        mfa=mfa,
    )


def _stamp(epoch: float | None) -> str | None:
    return format_expiration(epoch) if epoch is not None and epoch != float("inf") else None
