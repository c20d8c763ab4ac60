"""The error catalogue: every code the daemon or the CLI emits is one class here, with its
HTTP status, when it happens and what to do (the docstring); the message of each instance
says the same for the case at hand. Messages never contain a secret. README.md's error
table lists the same codes and statuses (tests/test_errors.py compares them)."""

from __future__ import annotations

import math
from typing import ClassVar

MAX_RETRY_AFTER = 2
"""Seconds: the longest Retry-After a client is told (see ``BrokerError.headers``)."""


class BrokerError(Exception):
    """Base class, never raised itself: 4xx means the user must act, 5xx means a retry can help."""

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

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, always
        self.retry_after = retry_after
        """Seconds until the daemon calls upstream again for this hop (its backoff)."""

    def copy(self, *, retry_after: float | None = None) -> BrokerError:
        """A fresh exception per raise: one instance re-raised by many tasks grows its traceback."""
        return type(self)(self.message, retry_after=retry_after)

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


# -- the AWS config and its profiles: fix the config, then retry or reload ----------------


class ProfileNotFound(BrokerError):
    """404: no AWS profile has the name the client asked for. Add it to the AWS config or
    fix the name (the message lists known profiles)."""

    status = 404
    code = "ProfileNotFound"


class ProfileConfigError(BrokerError):
    """400: the profile exists but its definition cannot work (a bad value, both
    source_profile and credential_source...). Fix the profile, then reload."""

    status = 400
    code = "InvalidProfile"
    needs_config_change = True


class SourceProfileLoop(ProfileConfigError):
    """400: source_profile entries form a loop. Point one of them at a profile with credentials."""

    code = "SourceProfileLoop"


class SourceProfileNotFound(ProfileConfigError):
    """400: source_profile names a profile that does not exist. Add it or fix the name."""

    code = "SourceProfileNotFound"


class SourceProfileMissing(ProfileConfigError):
    """400: the profile has role_arn but neither source_profile nor credential_source. Add
    source_profile."""

    code = "SourceProfileMissing"


class UnsupportedCredentialSource(ProfileConfigError):
    """400: the profile uses credential_source, which rolebroker does not support. Use
    source_profile instead."""

    code = "UnsupportedCredentialSource"


class ConflictingMfaSerial(ProfileConfigError):
    """400: profiles of one chain set different mfa_serial values. Keep one."""

    code = "ConflictingMfaSerial"


class MfaNeedsLongTermKeys(ProfileConfigError):
    """400: mfa_serial is set on a chain whose root gives temporary credentials (SSO,
    credential_process). Remove mfa_serial or root the chain in an IAM user's keys."""

    code = "MfaNeedsLongTermKeys"


class ConfigFileError(BrokerError):
    """400: the AWS config or credentials file cannot be read or parsed. Fix the file; the
    daemon keeps serving the last good snapshot meanwhile."""

    status = 400
    code = "ConfigFileError"
    needs_config_change = True


class NoSourceCredentials(BrokerError):
    """400: the root profile of the chain has no credentials at all. Give it keys,
    credential_process or SSO settings."""

    status = 400
    code = "NoSourceCredentials"
    needs_config_change = True


# -- the credential source and STS ---------------------------------------------------------


class StsRefused(BrokerError):
    """403: STS refused the call with an error code rolebroker has no class of its own for
    (the message names STS's code). Act on STS's message."""

    status = 403
    code = "StsRefused"


class AccessDenied(StsRefused):
    """403: STS denied AssumeRole (or GetSessionToken). Check the role's trust policy,
    external_id and the source identity's permissions."""

    code = "AccessDenied"


class SourceCredentialsRejected(StsRefused):
    """403: STS does not accept the source credentials (invalid, expired or mis-signed
    keys or session). Fix the keys or session of the source profile."""

    code = "SourceCredentialsRejected"


class StsInvalidRequest(StsRefused):
    """400: STS found the request itself invalid (ValidationError: e.g. a duration the role
    does not allow). Fix the profile, then reload."""

    status = 400
    code = "InvalidRequest"
    needs_config_change = True


class MfaRequired(BrokerError):
    """403: the chain needs an MFA session and none is active. Run: rolebroker mfa PROFILE
    (or wait for its mfa_process)."""

    status = 403
    code = "MfaRequired"
    awaits_user = True
    reached_upstream = False


class MfaCodeRejected(MfaRequired):
    """403: STS refused the MFA code; the profile still waits for a good one. Codes are
    single-use and change every 30 s: run rolebroker mfa PROFILE again."""

    code = "MfaCodeRejected"
    reached_upstream = True


class InvalidMfaCode(BrokerError):
    """400: a submitted code that cannot be one (not 6 digits); STS is not asked. Send the
    6 digits the device shows."""

    status = 400
    code = "InvalidMfaCode"


class MfaNotConfigured(BrokerError):
    """400: an MFA code was sent for a profile whose chain sets no mfa_serial. Nothing to
    unlock; add mfa_serial if the role needs MFA."""

    status = 400
    code = "MfaNotConfigured"


class SsoLoginRequired(BrokerError):
    """403: the SSO session of the chain's root is missing or expired. Run the aws sso
    login command in the message."""

    status = 403
    code = "SsoLoginRequired"
    awaits_user = True
    reached_upstream = False


class CredentialSourceFailed(BrokerError):
    """400: the root of a chain (credential_process, SSO, ...) failed for a reason the user
    must fix. Run the process by hand to see why."""

    status = 400
    code = "CredentialSourceFailed"


class StsUnavailable(BrokerError):
    """503: STS is unreachable, throttling or failing (5xx). Retry later (Retry-After);
    cached credentials are served while valid."""

    status = 503
    code = "StsUnavailable"
    retryable = True


class StsTimeout(BrokerError):
    """504: STS has not answered within request_timeout; the call goes on in the
    background. Retry in a few seconds."""

    status = 504
    code = "StsTimeout"
    retryable = True


class StsBadResponse(BrokerError):
    """502: STS (or something posing as it) answered with something unreadable: malformed
    XML, an empty body, missing fields. Often a proxy or a wrong endpoint_url; retried with
    backoff."""

    status = 502
    code = "StsBadResponse"
    retryable = True


class UpstreamCredentialsExpired(BrokerError):
    """502: STS, credential_process or SSO handed out credentials that are already expired
    or about to: never served, retried with backoff. Check the clock and the source."""

    status = 502
    code = "UpstreamCredentialsExpired"
    retryable = True


class InternalError(BrokerError):
    """500: a bug or an unexpected exception in rolebroker. See the daemon log."""

    status = 500
    code = "InternalError"


# -- the daemon's own routes -------------------------------------------------------------------


class InvalidNonce(BrokerError):
    """400: a listener-proof request (GET /proof) without a well-formed nonce. Send
    ?nonce= with 64 lowercase hex digits."""

    status = 400
    code = "InvalidNonce"


class TokenRotateFailed(BrokerError):
    """500: the new token could not be written, so the old one stays in force. Check the
    token file's directory."""

    status = 500
    code = "TokenRotateFailed"


class NotFound(BrokerError):
    """404: no such endpoint. Credentials are at GET /creds/PROFILE."""

    status = 404
    code = "NotFound"
    reached_upstream = False


class MethodNotAllowed(BrokerError):
    """405: the endpoint exists but not for this method. GET /creds/PROFILE, POST /mfa/PROFILE."""

    status = 405
    code = "MethodNotAllowed"
    reached_upstream = False


# -- refusals of the HTTP layer: the request never reached a profile ----------------------


class ForbiddenHost(BrokerError):
    """403: DNS-rebinding defence: the Host header must be 127.0.0.1, localhost or [::1],
    and there must be exactly one."""

    status = 403
    code = "ForbiddenHost"
    reached_upstream = False


class MissingToken(BrokerError):
    """401: no Authorization header. Send the token from the token file."""

    status = 401
    code = "MissingToken"
    reached_upstream = False


class InvalidToken(BrokerError):
    """403: the Authorization header does not match the token (or carries 'Bearer ').
    Re-export the token from the token file, raw."""

    status = 403
    code = "InvalidToken"
    reached_upstream = False


class BadRequest(BrokerError):
    """400: malformed HTTP or a body that cannot be parsed. Fix the client."""

    status = 400
    code = "BadRequest"
    reached_upstream = False

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class RequestTimeout(BadRequest):
    """408: the request did not arrive whole in time (slow or idle connection)."""

    status = 408
    code = "RequestTimeout"


class PayloadTooLarge(BadRequest):
    """413: the body is over the limit. The only body the daemon reads is an MFA code."""

    status = 413
    code = "PayloadTooLarge"


class HeadersTooLarge(BadRequest):
    """431: the request line and headers are over the limit."""

    status = 431
    code = "HeadersTooLarge"


class ServerBusy(BrokerError):
    """503: too many open connections: this one is shed at once rather than left to hang.
    Retry in a second."""

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
    """403: the grant's time is up. Get a new one: rolebroker grant PROFILE --ttl D, or
    re-run eval "$(rolebroker env PROFILE)"."""

    status = 403
    code = "GrantExpired"
    reached_upstream = False


class GrantRevoked(BrokerError):
    """403: the grant was revoked (rolebroker grant --revoke). Get a new one as for
    GrantExpired."""

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


class GrantNotFound(BrokerError):
    """404: no grant has that name or id (POST /grants/revoke). List them: rolebroker grants."""

    status = 404
    code = "GrantNotFound"
    reached_upstream = False


class MasterTokenRequired(BrokerError):
    """403: a grant was sent to an admin route (/status, /reload, /mfa, /token/rotate,
    /grants): those take only the master token from the token file."""

    status = 403
    code = "MasterTokenRequired"
    reached_upstream = False


class ForeignUser(BrokerError):
    """403: the connection comes from another user than the daemon's (the kernel says so),
    whatever token it sends. Run your own daemon: each user has one."""

    status = 403
    code = "ForeignUser"
    reached_upstream = False


# -- the container listener (169.254.170.2, container_server.py) ---------------------------


class MasterTokenOnContainerListener(BrokerError):
    """403: the master token was sent to the container listener, which takes only grants.
    Give the container a grant of its own: rolebroker docker-env PROFILE (or docker run)."""

    status = 403
    code = "MasterTokenOnContainerListener"
    reached_upstream = False


class ForbiddenSource(BrokerError):
    """403: the container listener was reached from an address that is not a local
    container's (loopback, or not a private address). Loopback clients use 127.0.0.1."""

    status = 403
    code = "ForbiddenSource"
    reached_upstream = False


# -- the CLI's own codes: what answered on the daemon's port is not a rolebroker error ---------


class BadReply(BrokerError):
    """502, CLI only: what answers on the daemon's port sent something that is not
    rolebroker's answer. Check what listens there (rolebroker doctor)."""

    status = 502
    code = "BadReply"


class HttpError(BrokerError):
    """502, CLI only (the reply's own HTTP status is shown): an HTTP error without a JSON
    error body. See the daemon log, or check what listens on the port."""

    status = 502
    code = "HttpError"
