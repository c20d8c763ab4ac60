"""Who may call what: the master token, a grant, or (when allowed) the daemon's own user
without a token; refusals and served credential requests go to the audit log.

The Guard (server.py) asks :meth:`Access.authenticate` before routing. Everything here runs on
the event loop and touches memory only: grant uses are written to the grants file later,
from a worker thread (:meth:`Access.touch`), audit lines by the audit log's own thread.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rolebroker.audit import AuditLog
from rolebroker.authtoken import TokenStore
from rolebroker.callers import PeerLookup
from rolebroker.errors import (
    ForeignUser,
    InvalidToken,
    MasterTokenRequired,
    MissingToken,
)
from rolebroker.grantcode import looks_like_grant
from rolebroker.grants import Grant, GrantStore
from rolebroker.identity import CallerIdentity
from rolebroker.statusdoc import CallerInfo

log = logging.getLogger("rolebroker")

PROCESS_WAIT = 0.25
"""Seconds a credential request waits at most for its caller's process (normally well under
a millisecond; /proc walks slow down with many open files): then it is answered anyway and
its audit line is written when the lookup ends."""
MAX_PENDING = 256
"""Process lookups waiting for the audit line; beyond this a line names the uid only."""
FLUSH_DELAY = 30.0
"""Seconds after a grant's first use until its ``last_used`` is written (once, not per use):
an idle daemon is never woken for it."""


Caller = tuple[PeerLookup | None, CallerIdentity | None]
"""A connection's lookup and what is known of the caller so far (its uid)."""


class Route(enum.Enum):
    OPEN = "open"
    CREDS = "creds"
    SELF = "self"
    """GET /grants/self: any valid credential."""
    ADMIN = "admin"


def route_of(path: str) -> Route:
    if path in ("/healthz", "/proof"):
        return Route.OPEN
    if path == "/creds" or path.startswith("/creds/"):
        return Route.CREDS
    if path == "/grants/self":
        return Route.SELF
    return Route.ADMIN


@dataclass(frozen=True, slots=True)
class Principal:
    """What a request authenticated as: the master token, a grant, or no token (same user)."""

    grant: Grant | None = None
    tokenless: bool = False

    @property
    def label(self) -> str | None:
        """For the audit log and /status: the grant's name, never its string."""
        if self.grant is not None:
            return self.grant.name
        return "(same user, no token)" if self.tokenless else None


MASTER = Principal()
TOKENLESS = Principal(tokenless=True)


class Access:
    def __init__(
        self,
        token: TokenStore,
        grants: GrantStore | None,
        audit: AuditLog | None,
        *,
        same_user_without_token: Callable[[], bool] = lambda: False,
        uid: int | None = None,
        identity: str = "unavailable",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.grants = grants
        self.audit = audit
        self._same_user = same_user_without_token
        self.uid = os.getuid() if uid is None else uid
        self.identity = identity
        """``netlink``, ``proc`` or ``unavailable``: how caller uids are learnt (/status)."""
        self._clock = clock
        self.last_callers: dict[str, CallerInfo] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0

    # -- decisions -----------------------------------------------------------------------------

    def check_user(self, caller: CallerIdentity | None) -> None:
        """Another user's connection is refused whatever it sends; an unknown uid is not
        checked (``caller_identity`` in /status says so)."""
        if caller is not None and caller.uid is not None and caller.uid != self.uid:
            raise ForeignUser(
                f"this rolebroker belongs to uid {self.uid} and serves only its own user (your "
                f"connection comes from uid {caller.uid}); run your own: rolebroker serve"
            )

    def authenticate(
        self, authorization: str | None, route: Route, caller: CallerIdentity | None
    ) -> Principal:
        if authorization is None:
            if route is Route.CREDS and caller is not None and caller.uid == self.uid and self._same_user():
                return TOKENLESS
            return _missing()
        if self.token.matches(authorization):
            return MASTER
        if looks_like_grant(authorization) and self.grants is not None:
            if route is Route.ADMIN:
                raise MasterTokenRequired(
                    "this route takes only the master token (the daemon's token file), not a grant; "
                    "grants are for GET /creds: run the admin command as the user who owns the daemon"
                )
            return Principal(self.grants.verify(authorization))
        if authorization[:7].lower() == "bearer ":
            raise InvalidToken(
                "the Authorization header carries the raw token, without 'Bearer ': send "
                'Authorization: <token> (run: eval "$(rolebroker env PROFILE)")'
            )
        raise InvalidToken(
            "the Authorization header does not match the daemon's token nor any grant; re-export it "
            '(run: eval "$(rolebroker env PROFILE)")'
        )

    def profile_for(self, path: str, principal: Principal, default: str) -> str:
        """The profile a credential request asks for; GET /creds with a grant: its first."""
        if path == "/creds":
            return principal.grant.profiles[0] if principal.grant is not None else default
        return path[7:]

    def check_scope(self, principal: Principal, profile: str) -> None:
        if principal.grant is not None and self.grants is not None:
            self.grants.check_scope(principal.grant, profile)

    # -- accountability ------------------------------------------------------------------------

    def served(
        self,
        profile: str,
        principal: Principal,
        caller: Caller,
        user_agent: str | None,
        role_arn: str | None,
    ) -> None:
        """A credential request answered 200: audit line and last caller (once the process
        is known), grant use (now)."""
        grant = principal.label
        at = _stamp(self._clock())

        def write(who: CallerIdentity | None) -> None:
            self.record(profile, "OK", 200, grant, who, user_agent, role_arn)
            found = who or CallerIdentity()
            self.last_callers[profile] = CallerInfo(found.pid, found.exe, at, grant)

        self._with_process(caller, write)
        if principal.grant is not None and self.grants is not None:
            self.grants.touch(principal.grant)
            self._schedule_flush()

    def refused(
        self,
        profile: str,
        outcome: str,
        status: int,
        principal: Principal | None,
        caller: Caller,
        user_agent: str | None,
    ) -> None:
        grant = principal.label if principal else None
        self._with_process(caller, lambda who: self.record(profile, outcome, status, grant, who, user_agent))

    def record(
        self,
        profile: str,
        outcome: str,
        status: int,
        grant: str | None,
        caller: CallerIdentity | None,
        user_agent: str | None,
        role_arn: str | None = None,
    ) -> None:
        if self.audit is not None:
            self.audit.record(
                profile=profile,
                outcome=outcome,
                status=status,
                role_arn=role_arn,
                grant=grant,
                caller=caller,
                user_agent=user_agent,
            )

    async def await_process(self, lookup: PeerLookup | None) -> None:
        """Start the lookup of the caller's process and wait for it (bounded), so the audit
        line names a client that exits as soon as it has its answer."""
        if lookup is None:
            return
        result = lookup.with_process(self.lookups())
        if isinstance(result, asyncio.Future) and not result.done():
            await asyncio.wait((result,), timeout=PROCESS_WAIT)

    def lookups(self) -> ThreadPoolExecutor:
        """One thread for process lookups: a slow /proc walk never delays the uid lookups
        (default executor) nor anything else."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="rolebroker-callers")
        return self._executor

    def _with_process(self, caller: Caller, write: Callable[[CallerIdentity | None], None]) -> None:
        """``write`` with the caller's process, looked up after the answer (one thread, at
        most MAX_PENDING waiting: beyond that the line names the uid only)."""
        lookup, known = caller
        if lookup is None or self._pending >= MAX_PENDING:
            write(known)
            return
        result = lookup.with_process(self.lookups())
        if isinstance(result, CallerIdentity):
            write(result)
            return
        self._pending += 1

        def done(future: asyncio.Future[CallerIdentity]) -> None:
            self._pending -= 1
            ok = not future.cancelled() and future.exception() is None
            write(future.result() if ok else known)

        result.add_done_callback(done)

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """At shutdown: the pending caller lookups' audit lines queued, grant uses written.
        Closing the audit log is its owner's (daemon.py): other listeners may share it."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown)
            await asyncio.sleep(0)  # the lookups' callbacks: their audit lines are queued
        if self.grants is not None:
            await asyncio.to_thread(self.grants.flush)

    def _schedule_flush(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        if self.grants is None:
            return
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.grants.flush))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)


def _missing() -> Principal:
    raise MissingToken(
        "send the token in the Authorization header; set AWS_CONTAINER_AUTHORIZATION_TOKEN "
        '(run: eval "$(rolebroker env PROFILE)")'
    )


def _stamp(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
