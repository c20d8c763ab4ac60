"""One AssumeRole call: a hop of a role chain."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rolebroker.credentials import Credentials, account_from_arn
from rolebroker.hops.base import Attempts, Hop
from rolebroker.hops.sts import StsClients, issued_credentials, translate_sts_error

log = logging.getLogger("rolebroker")

CHAINED_ROLE_MAX_SECONDS = 3600
"""STS caps role-chained sessions at one hour and fails anything longer."""


@dataclass(frozen=True, slots=True)
class RoleHop(Hop):
    profile: str
    role_arn: str
    source: Hop | None
    session_name: str
    external_id: str | None = None
    duration_seconds: int | None = None
    sts: StsClients = field(default_factory=StsClients, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.chained_key(
            f"role:{self.role_arn}|session={self.session_name}|external_id={self.external_id or ''}"
            f"|duration={self.duration_seconds or ''}|profile={self.profile}"
        )

    @property
    def label(self) -> str:
        return f"role {self.role_arn} of profile {self.profile}"

    def fetch(self, source: Credentials | None) -> Credentials:
        return self.fetch_counted(source, Attempts())

    def fetch_counted(self, source: Credentials | None, attempts: Attempts) -> Credentials:
        source = self.require_source(source)
        params: dict[str, object] = {"RoleArn": self.role_arn, "RoleSessionName": self.session_name}
        if self.external_id:
            params["ExternalId"] = self.external_id
        duration = self.duration_seconds
        if duration is not None and source.role_arn is not None and duration > CHAINED_ROLE_MAX_SECONDS:
            log.warning(
                "profile=%s duration_seconds=%d clamped to %d: STS limits role-chained sessions to 1 hour",
                self.profile,
                duration,
                CHAINED_ROLE_MAX_SECONDS,
            )
            duration = CHAINED_ROLE_MAX_SECONDS
        if duration is not None:
            params["DurationSeconds"] = duration
        client = self.sts.client(self.profile, source, attempts)
        endpoint = str(client.meta.endpoint_url)
        try:
            response = client.assume_role(**params)
        except Exception as exc:
            raise translate_sts_error(
                exc, action="AssumeRole", profile=self.profile, target=self.role_arn, endpoint=endpoint
            ) from None
        assumed = response.get("AssumedRoleUser") if isinstance(response, dict) else None
        assumed_arn = assumed.get("Arn") if isinstance(assumed, dict) else None
        account_id = account_from_arn(assumed_arn) or account_from_arn(self.role_arn)
        return issued_credentials(response, endpoint=endpoint, account_id=account_id, role_arn=self.role_arn)
