"""Credential providers: one small object per credential source.

A chain is providers wrapping providers (``RoleHop(source=RoleHop(source=ProfileSource))``).
Providers are blocking and stateless between calls; the cache decides when they run,
shares their results and keeps them off the event loop.
"""

from rolebroker.providers.base import Attempts, CredentialProvider, chain_of
from rolebroker.providers.mfa_session import MfaSession
from rolebroker.providers.profile_source import ProfileSource
from rolebroker.providers.role_hop import RoleHop
from rolebroker.providers.session_token import SessionTokenHop

__all__ = [
    "Attempts",
    "CredentialProvider",
    "MfaSession",
    "ProfileSource",
    "RoleHop",
    "SessionTokenHop",
    "chain_of",
]
