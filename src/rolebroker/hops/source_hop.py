"""The root of a chain: whatever botocore resolves for a profile without ``role_arn``."""

from __future__ import annotations

import datetime
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import botocore
import botocore.exceptions
import botocore.session
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials

from rolebroker.credentials import Credentials
from rolebroker.errors import (
    BrokerError,
    CredentialSourceFailed,
    NoSourceCredentials,
    ProfileConfigError,
    SsoLoginRequired,
    UpstreamCredentialsExpired,
)
from rolebroker.hops.base import Hop
from rolebroker.redact import redact

log = logging.getLogger("rolebroker")

UNKNOWN_EXPIRY_LIFETIME = 900.0
"""Refreshable credentials whose expiry cannot be read are taken to expire this soon after
they were fetched: refreshed early, never cached for ever."""

_SSO_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(botocore.exceptions, name)
    for name in ("SSOTokenLoadError", "UnauthorizedSSOTokenError", "SSOError", "TokenRetrievalError")
    if hasattr(botocore.exceptions, name)
)


@dataclass(frozen=True, slots=True)
class SourceHop(Hop):
    """Static keys, ``credential_process``, SSO, web identity: botocore knows them all.

    ``fingerprint`` is a digest of the profile's definition, so editing the keys or the
    process command gives a new cache key on reload.
    """

    profile: str
    fingerprint: str
    sso_login_hint: str = field(default="", compare=False)
    static: Credentials | None = field(default=None, compare=False)
    """Keys taken from the profile itself when a role profile names itself as source_profile
    (botocore would otherwise assume the role again)."""
    source: Hop | None = field(default=None, init=False)
    calls_sts: ClassVar[bool] = False

    @property
    def key(self) -> str:
        return f"profile:{self.profile}:{self.fingerprint}"

    @property
    def label(self) -> str:
        return f"credentials of profile {self.profile}"

    def fetch(self, source: Credentials | None) -> Credentials:
        if self.static is not None:
            return self.static
        try:
            session = botocore.session.Session(profile=self.profile)
            resolved = session.get_credentials()
            if resolved is None:
                raise NoSourceCredentials(
                    f"profile {self.profile!r} has no credentials: give it aws_access_key_id/"
                    "aws_secret_access_key, credential_process or SSO settings, or a role_arn with a "
                    "source_profile"
                )
            frozen = _frozen(resolved)
            expiry = _expiry_of(resolved, now=time.time())
        except BrokerError:
            raise
        except RuntimeError as exc:
            if "expired" not in str(exc):  # botocore: "refreshed credentials are still expired"
                raise
            raise UpstreamCredentialsExpired(
                f"the credential source of profile {self.profile!r} keeps returning expired credentials "
                f"({redact(str(exc))}); run it by hand (credential_process) or log in again (SSO)"
            ) from None
        except _SSO_ERRORS as exc:
            hint = self.sso_login_hint or f"aws sso login --profile {self.profile}"
            raise SsoLoginRequired(
                f"the SSO session of profile {self.profile!r} is missing or expired "
                f"({type(exc).__name__}); run: {hint}"
            ) from None
        except botocore.exceptions.ProfileNotFound:
            raise ProfileConfigError(f"profile {self.profile!r} no longer exists in the AWS config") from None
        except botocore.exceptions.CredentialRetrievalError as exc:
            raise CredentialSourceFailed(
                f"the credential source of profile {self.profile!r} failed: {redact(str(exc))}; "
                "run it by hand to see why"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProfileConfigError(
                f"cannot load the credentials of profile {self.profile!r}: {redact(str(exc))}"
            ) from None
        if not frozen.access_key or not frozen.secret_key:
            raise NoSourceCredentials(f"profile {self.profile!r} resolved to incomplete credentials")
        return Credentials(
            access_key_id=frozen.access_key,
            secret_access_key=frozen.secret_key,
            session_token=frozen.token or None,
            expiration=expiry,
        )


def _frozen(resolved: Any) -> ReadOnlyCredentials:
    """What botocore resolved, as it is. Asking refreshable credentials (credential_process)
    for a frozen copy would run the process again when fewer than 15 min remain, and fail
    with a bare RuntimeError when they are expired: the cache judges their expiry itself."""
    if isinstance(resolved, RefreshableCredentials) and getattr(resolved, "_expiry_time", None) is not None:
        kept = getattr(resolved, "_frozen_credentials", None)
        if isinstance(kept, ReadOnlyCredentials):
            return kept
    frozen: ReadOnlyCredentials = resolved.get_frozen_credentials()
    return frozen


def _expiry_of(resolved: Any, *, now: float) -> float | None:
    """botocore keeps the expiry of refreshable credentials (SSO, process) in a private
    attribute and offers no public way to read it (tests/test_sources.py and test_sso.py pin
    it). Should it move, the credentials are not taken for static ones: they count as
    expiring ``UNKNOWN_EXPIRY_LIFETIME`` from now, and the daemon says so once."""
    if not isinstance(resolved, RefreshableCredentials):
        return None  # static keys (profile, environment): they do not expire
    expiry = getattr(resolved, "_expiry_time", None)
    if isinstance(expiry, datetime.datetime):
        return expiry.timestamp()
    _warn_unknown_expiry(type(resolved).__name__)
    return now + UNKNOWN_EXPIRY_LIFETIME


@functools.cache
def _warn_unknown_expiry(kind: str) -> None:
    """Once per process and kind: the cause is the installed botocore, not a profile."""
    log.warning(
        "cannot read the expiry of botocore's %s (botocore %s): credential_process and SSO roots "
        "are treated as expiring %d s after each fetch and renewed early; please report this",
        kind,
        botocore.__version__,
        UNKNOWN_EXPIRY_LIFETIME,
    )
