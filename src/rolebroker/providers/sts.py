"""STS clients for a profile, and the translation of STS failures into broker errors."""

from __future__ import annotations

import threading
from typing import Any

import botocore.exceptions
import botocore.session
from botocore.config import Config

from rolebroker.credentials import Credentials
from rolebroker.errors import BrokerError, ProfileConfigError, StsRefused, StsTimeout, StsUnavailable

# The daemon answers a cold request within a few seconds, so STS gets short timeouts
# and one retry; the refresher retries with its own backoff.
_STS_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"})

_THROTTLING = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
_BAD_SOURCE = {
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "IncompleteSignature",
}


class StsClients:
    """Builds STS clients from the profile that names the role, so its ``region`` and
    ``endpoint_url`` (and ``AWS_ENDPOINT_URL_STS``) apply.

    botocore sessions are not thread-safe to create clients from, hence the lock; the
    session per profile is kept because loading botocore's data files is the slow part.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, botocore.session.Session] = {}

    def client(self, profile: str, credentials: Credentials) -> Any:
        with self._lock:
            session = self._sessions.get(profile)
            if session is None:
                session = botocore.session.Session(profile=profile)
                self._sessions[profile] = session
            try:
                region = session.get_config_variable("region") or "us-east-1"
                return session.create_client(
                    "sts",
                    region_name=region,
                    aws_access_key_id=credentials.access_key_id,
                    aws_secret_access_key=credentials.secret_access_key,
                    aws_session_token=credentials.session_token,
                    config=_STS_CONFIG,
                )
            except botocore.exceptions.BotoCoreError as exc:
                raise ProfileConfigError(
                    f"cannot create an STS client for profile {profile!r}: {exc}"
                ) from None


def issued_credentials(
    response: Any, *, account_id: str | None = None, role_arn: str | None = None
) -> Credentials:
    """The ``Credentials`` block of an AssumeRole or GetSessionToken response."""
    issued = response["Credentials"]
    return Credentials(
        access_key_id=issued["AccessKeyId"],
        secret_access_key=issued["SecretAccessKey"],
        session_token=issued["SessionToken"],
        expiration=issued["Expiration"].timestamp(),
        account_id=account_id,
        role_arn=role_arn,
    )


def translate_sts_error(exc: Exception, *, action: str, profile: str, target: str) -> BrokerError:
    """Map what STS or the network said to a code, a status and the next step."""
    where = f"{action} for profile {profile!r} ({target})"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        sts_message = str(error.get("Message", "")).strip()
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _THROTTLING or status >= 500:
            return StsUnavailable(f"STS is throttling or failing ({code}) on {where}; retry in a few seconds")
        if code in _BAD_SOURCE:
            return StsRefused(
                f"STS rejected the source credentials on {where}: {code}: {sts_message}. "
                "Check the keys or session of the source profile (run: rolebroker status)",
                code="SourceCredentialsRejected",
            )
        if code == "ValidationError":
            return StsRefused(
                f"STS refused {where}: {sts_message}; fix the profile", code="InvalidRequest", status=400
            )
        if code == "AccessDenied":
            return StsRefused(
                f"STS denied {where}: {sts_message}. Check the role's trust policy, external_id and "
                "the source identity's permissions"
            )
        return StsRefused(
            f"STS refused {where}: {code}: {sts_message}", code=code if code.isalnum() else "StsError"
        )
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectTimeoutError):
        return StsTimeout(f"STS did not answer in time on {where}; retry in a few seconds")
    if isinstance(
        exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionClosedError
    ):
        return StsUnavailable(
            f"STS is unreachable on {where} ({type(exc).__name__}); check the network, then retry"
        )
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return ProfileConfigError(f"incomplete source credentials on {where}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StsUnavailable(f"STS call failed on {where}: {type(exc).__name__}: {exc}")
    return BrokerError(f"unexpected {type(exc).__name__} on {where}; see the daemon log")
