"""The credential value passed between hops, the cache and the HTTP layer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

_ACCOUNT_IN_ARN = re.compile(r"^arn:aws[\w-]*:(?:sts|iam)::(\d{12}):")


@dataclass(frozen=True, slots=True)
class Credentials:
    """One set of AWS credentials.

    The secret fields are excluded from ``repr`` so that a stray log line or
    traceback cannot print them.
    """

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: float | None = None
    """Epoch seconds; None for long-term keys that never expire."""
    account_id: str | None = None
    role_arn: str | None = None

    @property
    def is_temporary(self) -> bool:
        return self.session_token is not None

    def remaining(self, now: float) -> float:
        return float("inf") if self.expiration is None else self.expiration - now

    def to_ecs_json(self) -> dict[str, str]:
        """The body every SDK's container provider accepts (docs/clients.md, "The response")."""
        if self.expiration is None or self.session_token is None:
            raise ValueError("only temporary credentials with an expiration are served")
        body = {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": format_expiration(self.expiration),
        }
        if self.account_id:
            body["AccountId"] = self.account_id
        if self.role_arn:
            body["RoleArn"] = self.role_arn
        return body


def format_expiration(epoch: float) -> str:
    """UTC with a literal ``Z``: ``isoformat()``'s ``+00:00`` breaks JS SDK v3 and Rust."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def account_from_arn(arn: str | None) -> str | None:
    if not arn:
        return None
    match = _ACCOUNT_IN_ARN.match(arn)
    return match.group(1) if match else None
