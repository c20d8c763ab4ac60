"""An MFA session: GetSessionToken with a code the user handed to the daemon out of band.

It sits between the root keys and the first role of every chain that asks for MFA, so one
code unlocks every profile with the same keys and ``mfa_serial`` for the life of the
session, and the roles above it refresh from it without asking for a new code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import botocore.exceptions

from rolebroker.credentials import Credentials
from rolebroker.errors import BrokerError, MfaCodeRejected, MfaNeedsLongTermKeys, MfaRequired
from rolebroker.hops.base import Attempts, Hop
from rolebroker.hops.sts import StsClients, issued_credentials, translate_sts_error
from rolebroker.redact import redact

DEFAULT_MFA_SESSION_SECONDS = 12 * 3600
MIN_MFA_SESSION_SECONDS = 900
MAX_MFA_SESSION_SECONDS = 129600
"""STS limits GetSessionToken for IAM users to 15 min .. 36 h."""


def clamp_mfa_duration(seconds: int | None) -> int:
    if seconds is None:
        return DEFAULT_MFA_SESSION_SECONDS
    return max(MIN_MFA_SESSION_SECONDS, min(MAX_MFA_SESSION_SECONDS, seconds))


@dataclass(frozen=True, slots=True)
class MfaSessionHop(Hop):
    """GetSessionToken with ``SerialNumber``/``TokenCode`` over long-term keys.

    Without a code, ``fetch`` fails at once with MfaRequired: no request ever waits for a
    human. A code travels in a one-off copy (``with_code``) that shares this hop's key, so
    the cache stores its result under the same entry and the code is used exactly once.
    """

    profile: str
    """The root profile: its keys sign the call and its region/endpoint apply."""
    mfa_serial: str
    source: Hop | None
    duration_seconds: int = DEFAULT_MFA_SESSION_SECONDS
    mfa_process: str | None = field(default=None, compare=False)
    """A command that prints a code (e.g. from a YubiKey), run out of band by the daemon."""
    unlock_profile: str = field(default="", compare=False)
    """A profile to name in ``run: rolebroker mfa PROFILE`` (any profile of the chain works)."""
    code: str | None = field(default=None, compare=False, repr=False)
    sts: StsClients = field(default_factory=StsClients, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.chained_key(f"mfa:{self.mfa_serial}|duration={self.duration_seconds}")

    @property
    def label(self) -> str:
        return f"MFA session {self.mfa_serial} of profile {self.profile}"

    def with_code(self, code: str) -> MfaSessionHop:
        return dataclasses.replace(self, code=code)

    def fetch(self, source: Credentials | None) -> Credentials:
        return self.fetch_counted(source, Attempts())

    def fetch_counted(self, source: Credentials | None, attempts: Attempts) -> Credentials:
        source = self.require_source(source)
        if source.is_temporary:
            raise MfaNeedsLongTermKeys(
                f"mfa_serial needs the long-term keys of an IAM user, but profile {self.profile!r} "
                "gives temporary credentials (SSO, credential_process or a session token); remove "
                "mfa_serial from the chain or use a profile with aws_access_key_id"
            )
        if self.code is None:
            raise MfaRequired(
                f"an MFA code for {self.mfa_serial} is needed; run: rolebroker mfa "
                f"{self.unlock_profile or self.profile}"
            )
        client = self.sts.client(self.profile, source, attempts)
        endpoint = str(client.meta.endpoint_url)
        try:
            response = client.get_session_token(
                DurationSeconds=self.duration_seconds, SerialNumber=self.mfa_serial, TokenCode=self.code
            )
        except Exception as exc:
            raise self._translate(exc, endpoint) from None
        return issued_credentials(response, endpoint=endpoint)

    def _translate(self, exc: Exception, endpoint: str) -> BrokerError:
        unlock = f"run: rolebroker mfa {self.unlock_profile or self.profile}"
        if isinstance(exc, botocore.exceptions.ClientError):
            sts_error = exc.response.get("Error", {})
            if sts_error.get("Code") == "AccessDenied":
                said = self._scrub(redact(str(sts_error.get("Message", "")).strip())) or "AccessDenied"
                return MfaCodeRejected(
                    f"STS rejected the MFA code for {self.mfa_serial} ({said}). Codes are single-use "
                    f"and change every 30 s; {unlock}"
                )
        error = translate_sts_error(
            exc, action="GetSessionToken", profile=self.profile, target=self.mfa_serial, endpoint=endpoint
        )
        return type(error)(self._scrub(error.message))

    def _scrub(self, text: str) -> str:
        """STS does not echo the code, but a message must never carry it (the serial's
        account id may contain the same digits, so it is kept intact)."""
        if not self.code:
            return text
        parts = text.split(self.mfa_serial)
        return self.mfa_serial.join(part.replace(self.code, "******") for part in parts)
