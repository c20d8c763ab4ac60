"""Credential hops: one small object per credential source.

A chain is hops wrapping hops (``RoleHop(source=RoleHop(source=SourceHop))``).
Hops are blocking and stateless between calls; the cache decides when they run,
shares their results and keeps them off the event loop.
"""

from rolebroker.hops.base import Attempts, Hop, chain_of
from rolebroker.hops.mfa_session import MfaSessionHop
from rolebroker.hops.role_hop import RoleHop
from rolebroker.hops.session_token import SessionTokenHop
from rolebroker.hops.source_hop import SourceHop

__all__ = [
    "Attempts",
    "Hop",
    "MfaSessionHop",
    "RoleHop",
    "SessionTokenHop",
    "SourceHop",
    "chain_of",
]
