"""Serving a profile that has no role: never hand long-term keys to clients."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rolebroker.credentials import Credentials
from rolebroker.hops.base import Attempts, Hop
from rolebroker.hops.sts import StsClients, issued_credentials, translate_sts_error

UNKNOWN_EXPIRY_SECONDS = 3600
"""Session credentials without a known expiry (a profile with aws_session_token) are
re-read from the profile this often."""


@dataclass(frozen=True, slots=True)
class SessionTokenHop(Hop):
    """GetSessionToken over long-term keys, like the ECS agent hands out only session
    credentials; credentials that are already temporary (SSO, process) pass through."""

    profile: str
    source: Hop | None
    duration_seconds: int | None = None
    sts: StsClients = field(default_factory=StsClients, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.chained_key(f"session:{self.profile}|duration={self.duration_seconds or ''}")

    @property
    def label(self) -> str:
        return f"session of profile {self.profile}"

    def fetch(self, source: Credentials | None) -> Credentials:
        return self.fetch_counted(source, Attempts())

    def fetch_counted(self, source: Credentials | None, attempts: Attempts) -> Credentials:
        source = self.require_source(source)
        if source.is_temporary:
            if source.expiration is not None:
                return source
            return Credentials(
                access_key_id=source.access_key_id,
                secret_access_key=source.secret_access_key,
                session_token=source.session_token,
                expiration=time.time() + UNKNOWN_EXPIRY_SECONDS,
                account_id=source.account_id,
                role_arn=source.role_arn,
            )
        client = self.sts.client(self.profile, source, attempts)
        endpoint = str(client.meta.endpoint_url)
        params: dict[str, object] = {}
        if self.duration_seconds:
            params["DurationSeconds"] = self.duration_seconds
        try:
            response = client.get_session_token(**params)
        except Exception as exc:
            raise translate_sts_error(
                exc,
                action="GetSessionToken",
                profile=self.profile,
                target="long-term keys",
                endpoint=endpoint,
            ) from None
        return issued_credentials(response, endpoint=endpoint)
