"""STS faked at the hop level: hops that count their fetches and mint credentials on a
fake clock, and a catalog that reads the real AWS config but swaps every hop for one."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rolebroker.credentials import Credentials
from rolebroker.errors import BrokerError
from rolebroker.hops import Attempts, Hop, MfaSessionHop, chain_of
from rolebroker.profiles import ProfileCatalog
from tests.support.clock import FakeClock


@dataclass(eq=False)
class FakeHop(Hop):
    """Counts fetches; issues credentials valid for ``lifetime`` seconds of the fake clock."""

    name: str
    clock: FakeClock
    source: Hop | None = None
    lifetime: float = 3600.0
    delay: float = 0.0
    fail_with: BrokerError | None = None
    hang: threading.Event | None = None
    """While set to an unset event, fetches block until it is set (a hanging STS)."""
    ident: str = ""
    """The key of the real hop this one stands in for (see :class:`FakeSts`)."""
    calls: int = 0
    sources_seen: list[Credentials | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def profile(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def key(self) -> str:
        return f"fake:{self.ident or self.name}"

    @property
    def label(self) -> str:
        return f"fake {self.name}"

    def fetch(self, source: Credentials | None) -> Credentials:
        with self.lock:
            self.calls += 1
            n = self.calls
        self.sources_seen.append(source)
        if self.delay:
            time.sleep(self.delay)
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail_with is not None:
            raise type(self.fail_with)(self.fail_with.message)
        expiration = None if self.lifetime == float("inf") else self.clock() + self.lifetime
        return Credentials(f"ASIA{self.name}{n}", "secret", "token", expiration)


class FakeSts:
    """One fake hop per real hop key, shared across catalog reloads like the real cache
    keys are; ``fail_with`` breaks every fetch (STS down) until set back to None."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.hops: dict[str, FakeHop] = {}

    def load(self) -> ProfileCatalog:
        """A ``Broker`` catalog loader: the real files, parsed by botocore, fake hops."""
        real = ProfileCatalog.load()
        return FakeCatalog(real.profiles, real.sso_sessions, real.paths, real.signature, fakes=self)

    def fake(self, real: Hop) -> FakeHop:
        found = self.hops.get(real.key)
        if found is None:
            source = self.fake(real.source) if real.source is not None else None
            lifetime = self.lifetime if source is not None else float("inf")  # roots: long-term keys
            found = FakeHop(real.profile, self.clock, source=source, lifetime=lifetime, ident=real.key)
            self.hops[real.key] = found
        return found

    def of(self, profile: str) -> FakeHop:
        """The fake top hop that serves ``profile`` (after it was asked for once)."""
        return next(hop for hop in self.hops.values() if hop.name == profile and hop.source is not None)

    def calls(self) -> int:
        return sum(hop.calls for hop in self.hops.values())

    def fail(self, error: BrokerError | None) -> None:
        for hop in self.hops.values():
            hop.fail_with = error


@dataclass
class FakeCatalog(ProfileCatalog):
    fakes: FakeSts | None = None

    def hop(self, name: str) -> Hop:
        real = super().hop(name)
        assert self.fakes is not None
        for link in reversed(chain_of(real)):
            self.fakes.fake(link)
        return self.fakes.fake(real)


@dataclass(frozen=True, slots=True)
class FakeMfaSessionHop(MfaSessionHop):
    """A real MFA session hop (no code: MfaRequired at once) whose GetSessionToken is faked:
    a code buys a session of ``lifetime`` seconds on ``clock``."""

    clock: FakeClock = field(default_factory=FakeClock, compare=False)
    lifetime: float = 12 * 3600.0

    def fetch_counted(self, source: Credentials | None, attempts: Attempts) -> Credentials:
        if self.code is None:
            return MfaSessionHop.fetch_counted(self, source, attempts)  # raises MfaRequired
        return Credentials("ASIAMFASESSION", "mfa-secret", "mfa-token", self.clock() + self.lifetime)
