"""Errors that reach a client: each has a stable code, an HTTP status and a message
that tells the user what to do next. Messages never contain a secret."""

from __future__ import annotations

from typing import ClassVar


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

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, always
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        return {}


class ProfileNotFound(BrokerError):
    status = 404
    code = "ProfileNotFound"


class ProfileConfigError(BrokerError):
    """The profile exists but its definition cannot work (loop, missing source, bad value)."""

    status = 400
    code = "InvalidProfile"


class ConfigFileError(BrokerError):
    status = 400
    code = "ConfigFileError"


class NoSourceCredentials(BrokerError):
    status = 400
    code = "NoSourceCredentials"


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


class StsUnavailable(BrokerError):
    status = 503
    code = "StsUnavailable"
    retryable = True

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class StsTimeout(BrokerError):
    status = 504
    code = "StsTimeout"
    retryable = True


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
