"""Static credentials for tools that cannot use the endpoint: ``credential-process`` and ``export``.

The daemon's ECS JSON is turned into the ``credential_process`` JSON (so a profile with
``credential_process = rolebroker credential-process prod`` works in any tool that reads
profiles) or into shell lines. Each shell gets values quoted by its own rules, so nothing in
a value is ever evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rolebroker.cli.shellenv import fish_quote, posix_quote
from rolebroker.discovery import INSIDE_DAEMON as INSIDE_DAEMON  # the daemon sets it

FORMATS = ("env", "fish", "powershell", "process", "json")


VARIABLES = (
    ("AWS_ACCESS_KEY_ID", "access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("AWS_SESSION_TOKEN", "session_token"),
    ("AWS_CREDENTIAL_EXPIRATION", "expiration"),
)
"""The variables every SDK's environment provider reads (botocore also reads the expiration)."""


class BadCredentials(ValueError):
    """The daemon's reply lacks a field; never carries a value."""


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    """Temporary credentials as the daemon served them; secrets are kept out of ``repr``."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: str
    """ISO 8601 UTC, ``YYYY-MM-DDTHH:MM:SSZ``, exactly as the daemon sent it."""

    @classmethod
    def from_ecs(cls, body: Mapping[str, Any]) -> IssuedCredentials:
        names = {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
        missing = sorted(name for name in names if not isinstance(body.get(name), str) or not body[name])
        if missing:
            raise BadCredentials(f"the daemon's reply has no {', '.join(missing)}")
        return cls(body["AccessKeyId"], body["SecretAccessKey"], body["Token"], body["Expiration"])


def credential_process_json(credentials: IssuedCredentials) -> str:
    """What the AWS CLI and SDKs expect from a ``credential_process`` (Version 1)."""
    return json.dumps(
        {
            "Version": 1,
            "AccessKeyId": credentials.access_key_id,
            "SecretAccessKey": credentials.secret_access_key,
            "SessionToken": credentials.session_token,
            "Expiration": credentials.expiration,
        }
    )


def render(credentials: IssuedCredentials, fmt: str, *, ecs_json: str = "") -> str:
    """``fmt`` is one of FORMATS; ``json`` prints ``ecs_json`` (the daemon's reply) as it came."""
    if fmt == "process":
        return credential_process_json(credentials) + "\n"
    if fmt == "json":
        return ecs_json.rstrip("\n") + "\n"
    values = [(name, str(getattr(credentials, attr))) for name, attr in VARIABLES]
    if fmt == "env":
        lines = [f"export {name}={posix_quote(value)}" for name, value in values]
    elif fmt == "fish":
        lines = [f"set -gx {name} {fish_quote(value)}" for name, value in values]
    elif fmt == "powershell":
        lines = [f"$Env:{name} = {powershell_quote(value)}" for name, value in values]
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return "\n".join(lines) + "\n"


def powershell_quote(value: str) -> str:
    """PowerShell single quotes: no expansion; a quote (ASCII or typographic) is doubled."""
    doubled = "".join(ch * 2 if ch in "'\u2018\u2019\u201a\u201b" else ch for ch in value)
    return f"'{doubled}'"
