"""STS clients for a profile, and the translation of STS failures into broker errors."""

from __future__ import annotations

import logging
import threading
from typing import Any

import botocore.exceptions
import botocore.loaders
import botocore.parsers
import botocore.session
from botocore.config import Config

from rolebroker.credentials import Credentials
from rolebroker.errors import (
    AccessDenied,
    BrokerError,
    InternalError,
    ProfileConfigError,
    SourceCredentialsRejected,
    StsBadResponse,
    StsInvalidRequest,
    StsRefused,
    StsTimeout,
    StsUnavailable,
)
from rolebroker.hops.base import Attempts
from rolebroker.redact import redact

log = logging.getLogger("rolebroker")

STS_CONNECT_TIMEOUT = 3
STS_READ_TIMEOUT = 20
STS_ATTEMPTS = 2
"""Every STS call is bounded: at most 2 HTTP attempts (botocore's standard retry) of at most
3 s to connect and 20 s to answer. A request waits only ``request_timeout`` (5 s) for a cold
hop; a slower answer lands in the background and is cached for the next request, and the
cache's own backoff spaces out further calls."""

_STS_CONFIG = Config(
    connect_timeout=STS_CONNECT_TIMEOUT,
    read_timeout=STS_READ_TIMEOUT,
    retries={"total_max_attempts": STS_ATTEMPTS, "mode": "standard"},
)

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

    One botocore session per profile keeps that profile's configuration, but every session
    shares one data loader: botocore's service model and endpoint data are loaded once per
    daemon, not once per profile (that was ~8 MB per profile). botocore sessions are not
    thread-safe to create clients from, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, botocore.session.Session] = {}
        self._loader: botocore.loaders.Loader | None = None

    def session(self, profile: str) -> botocore.session.Session:
        """A session for ``profile`` reading botocore's data through the shared loader."""
        session = botocore.session.Session(profile=profile)
        if self._loader is None:
            self._loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", self._loader)
        return session

    def client(self, profile: str, credentials: Credentials, attempts: Attempts | None = None) -> Any:
        with self._lock:
            try:
                session = self._sessions.get(profile)
                if session is None:
                    session = self._sessions[profile] = self.session(profile)
                region = session.get_config_variable("region") or "us-east-1"
                client = session.create_client(
                    "sts",
                    region_name=region,
                    aws_access_key_id=credentials.access_key_id,
                    aws_secret_access_key=credentials.secret_access_key,
                    aws_session_token=credentials.session_token,
                    config=_STS_CONFIG,
                )
            except botocore.exceptions.BotoCoreError as exc:
                raise ProfileConfigError(
                    f"cannot create an STS client for profile {profile!r}: {redact(str(exc))}"
                ) from None
        if attempts is not None:
            client.meta.events.register("before-send.sts", attempts.add)
        return client


def issued_credentials(
    response: Any, *, endpoint: str, account_id: str | None = None, role_arn: str | None = None
) -> Credentials:
    """The ``Credentials`` block of an AssumeRole or GetSessionToken response."""
    try:
        issued = response["Credentials"]
        return Credentials(
            access_key_id=str(issued["AccessKeyId"]),
            secret_access_key=str(issued["SecretAccessKey"]),
            session_token=str(issued["SessionToken"]),
            expiration=issued["Expiration"].timestamp(),
            account_id=account_id,
            role_arn=role_arn,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        missing = exc.args[0] if isinstance(exc, KeyError) else type(exc).__name__
        log.warning(
            "bad STS answer from %s: no usable credentials (%s missing or malformed)", endpoint, missing
        )
        raise StsBadResponse(
            f"STS at {endpoint} answered without usable credentials ({missing} missing or malformed); "
            "a proxy or a wrong endpoint_url may be in the way. Retried with backoff; see the daemon log"
        ) from None


def translate_sts_error(
    exc: Exception, *, action: str, profile: str, target: str, endpoint: str | None = None
) -> BrokerError:
    """Map what STS or the network said to a code, a status and the next step. Upstream
    text is redacted and bounded: an endpoint that echoes the request must not leak it."""
    where = f"{action} for profile {profile!r} ({target})"
    url = endpoint or "the STS endpoint"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = redact(str(error.get("Code", "Unknown")), limit=64)
        sts_message = redact(str(error.get("Message", "")).strip())
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _THROTTLING or status >= 500:
            return StsUnavailable(
                f"STS at {url} is throttling or failing ({code}) on {where}; retried with backoff, "
                "retry in a few seconds"
            )
        if code in _BAD_SOURCE:
            return SourceCredentialsRejected(
                f"STS rejected the source credentials on {where}: {code}: {sts_message}. "
                "Check the keys or session of the source profile (run: rolebroker status)"
            )
        if code == "ValidationError":
            return StsInvalidRequest(f"STS refused {where}: {sts_message}; fix the profile, then reload")
        if code == "AccessDenied":
            return AccessDenied(
                f"STS denied {where}: {sts_message}. Check the role's trust policy, external_id and "
                "the source identity's permissions"
            )
        # Any other STS code: one documented class; STS's own code travels in the message.
        return StsRefused(f"STS refused {where}: {code}: {sts_message}")
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectTimeoutError):
        return StsTimeout(f"STS at {url} did not answer in time on {where}; retry in a few seconds")
    if isinstance(
        exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionClosedError
    ):
        return StsUnavailable(
            f"STS at {url} is unreachable on {where} ({type(exc).__name__}); check the network, then retry"
        )
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return ProfileConfigError(f"incomplete source credentials on {where}: {redact(str(exc))}")
    if isinstance(exc, botocore.parsers.ResponseParserError):
        log.warning("bad STS answer from %s on %s: %s", url, where, redact(str(exc)))
        return StsBadResponse(
            f"STS at {url} sent an answer that cannot be parsed on {where}; a proxy or a wrong "
            "endpoint_url may be in the way. Retried with backoff; see the daemon log"
        )
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StsUnavailable(
            f"STS call to {url} failed on {where}: {type(exc).__name__}: {redact(str(exc))}"
        )
    log.warning("unexpected %s from STS at %s on %s: %s", type(exc).__name__, url, where, redact(str(exc)))
    return InternalError(f"unexpected {type(exc).__name__} on {where}; see the daemon log")
