"""Errors that reach a client: each has a stable code, an HTTP status and a message
that tells the user what to do next. Messages never contain a secret."""

from __future__ import annotations

import math
from typing import ClassVar

MAX_RETRY_AFTER = 2
"""Seconds: the longest Retry-After a client is told (see ``BrokerError.headers``)."""


class BrokerError(Exception):
    """Base class: 4xx means the user must act, 5xx means a retry can help."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "InternalError"
    retryable: ClassVar[bool] = False
    awaits_user: ClassVar[bool] = False
    """True when only the user can unblock it (MFA code, SSO login): repeats are not news."""
    reached_upstream: ClassVar[bool] = True
    """False when the fetch failed before calling STS (no code yet, no SSO login), so the
    attempt is not counted as an STS call in /status."""
    needs_config_change: ClassVar[bool] = False
    """True when retrying cannot help until the AWS config changes: the hop is not called
    again before a reload (or a changed file, which re-keys it)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, always
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]
        self.retry_after = retry_after
        """Seconds until the daemon calls upstream again for this hop (its backoff)."""

    def copy(self, *, retry_after: float | None = None) -> BrokerError:
        """A fresh exception per raise: one instance re-raised by many tasks grows its traceback."""
        return type(self)(self.message, code=self.code, status=self.status, retry_after=retry_after)

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        """A 503 says when a retry could get a different answer, capped: aws-sdk-js v2 sleeps
        for Retry-After between its 4 attempts, and a client that is told to wait a minute
        hangs for minutes, while a retry during the backoff costs STS nothing (it is answered
        from the last error)."""
        if self.status != 503:
            return {}
        wait = math.ceil(self.retry_after or 1)
        return {"Retry-After": str(min(max(1, wait), MAX_RETRY_AFTER))}


class ProfileNotFound(BrokerError):
    status = 404
    code = "ProfileNotFound"


class ProfileConfigError(BrokerError):
    """The profile exists but its definition cannot work (loop, missing source, bad value)."""

    status = 400
    code = "InvalidProfile"
    needs_config_change = True


class ConfigFileError(BrokerError):
    status = 400
    code = "ConfigFileError"
    needs_config_change = True


class NoSourceCredentials(BrokerError):
    status = 400
    code = "NoSourceCredentials"
    needs_config_change = True


class StsRefused(BrokerError):
    """STS answered with an error the user must fix (AccessDenied, bad keys, bad request)."""

    status = 403
    code = "AccessDenied"


class MfaRequired(BrokerError):
    status = 403
    code = "MfaRequired"
    awaits_user = True
    reached_upstream = False


class MfaCodeRejected(MfaRequired):
    """STS refused the code: the profile still waits for a good one."""

    code = "MfaCodeRejected"
    reached_upstream = True


class InvalidMfaCode(BrokerError):
    """A submitted code that cannot be one (not 6 digits); STS is not asked."""

    status = 400
    code = "InvalidMfaCode"


class MfaNotConfigured(BrokerError):
    status = 400
    code = "MfaNotConfigured"


class SsoLoginRequired(BrokerError):
    status = 403
    code = "SsoLoginRequired"
    awaits_user = True
    reached_upstream = False


class CredentialSourceFailed(BrokerError):
    """The root of a chain (credential_process, SSO, ...) failed for a reason the user must fix."""

    status = 400
    code = "CredentialSourceFailed"


class StsInvalidRequest(StsRefused):
    """STS found the request itself invalid (ValidationError: e.g. a duration the role does
    not allow): only a change to the profile can fix it."""

    status = 400
    code = "InvalidRequest"
    needs_config_change = True


class StsUnavailable(BrokerError):
    status = 503
    code = "StsUnavailable"
    retryable = True


class StsTimeout(BrokerError):
    status = 504
    code = "StsTimeout"
    retryable = True


class StsBadResponse(BrokerError):
    """STS (or something posing as it) answered with something unreadable: malformed XML, an
    empty body, missing fields. Often a proxy or a broken endpoint; a retry may fix it."""

    status = 502
    code = "StsBadResponse"
    retryable = True


class UpstreamCredentialsExpired(BrokerError):
    """STS, credential_process or SSO handed out credentials that are already expired or
    about to: they are never served, and the hop is retried with backoff."""

    status = 502
    code = "UpstreamCredentialsExpired"
    retryable = True


class InvalidNonce(BrokerError):
    """A listener-proof request without a well-formed nonce."""

    status = 400
    code = "InvalidNonce"


class TokenRotateFailed(BrokerError):
    """The new token could not be written, so the old one stays in force."""

    status = 500
    code = "TokenRotateFailed"


# -- refusals of the HTTP layer: the request never reached a profile ----------------------


class ForbiddenHost(BrokerError):
    """DNS-rebinding defence: only loopback names, and exactly one Host header."""

    status = 403
    code = "ForbiddenHost"
    reached_upstream = False


class MissingToken(BrokerError):
    status = 401
    code = "MissingToken"
    reached_upstream = False


class InvalidToken(BrokerError):
    status = 403
    code = "InvalidToken"
    reached_upstream = False


class BadRequest(BrokerError):
    """Malformed HTTP or a body that cannot be parsed."""

    status = 400
    code = "BadRequest"
    reached_upstream = False

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class RequestTimeout(BadRequest):
    """The request did not arrive whole in time (slow or idle connection)."""

    status = 408
    code = "RequestTimeout"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "PayloadTooLarge"


class HeadersTooLarge(BadRequest):
    status = 431
    code = "HeadersTooLarge"


class ServerBusy(BrokerError):
    """Too many open connections: this one is shed at once rather than left to hang."""

    status = 503
    code = "ServerBusy"
    retryable = True
    reached_upstream = False

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "Connection": "close"}


# -- grants: scoped credentials for the endpoint (see grants.py) --------------------------


class GrantScope(BrokerError):
    """A valid grant asked for a profile it does not cover; the message names what it covers."""

    status = 403
    code = "GrantScope"
    reached_upstream = False


class GrantExpired(BrokerError):
    status = 403
    code = "GrantExpired"
    reached_upstream = False


class GrantRevoked(BrokerError):
    status = 403
    code = "GrantRevoked"
    reached_upstream = False


class GrantLimitReached(BrokerError):
    """The grants file is full of live grants: new ones would make it grow without bound."""

    status = 409
    code = "GrantLimitReached"
    reached_upstream = False


class InvalidGrantRequest(BrokerError):
    """A grant asked for with no profile, a bad name or a bad duration."""

    status = 400
    code = "InvalidGrantRequest"
    reached_upstream = False
