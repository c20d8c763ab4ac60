"""The interface every credential source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from rolebroker.credentials import Credentials
from rolebroker.errors import InternalError


class Attempts:
    """The HTTP requests one fetch really sent upstream, botocore's own retries included,
    so /status counts every call that reached STS. ``None``: the hop does not count."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count: int | None = None

    def add(self, **_event: object) -> None:
        """Also a botocore event handler (``before-send``): one call per HTTP attempt."""
        self.count = (self.count or 0) + 1


class Hop(ABC):
    """One hop of a credential chain.

    ``key`` identifies the hop by everything that influences its result, so two profiles
    with the same definition share one cache entry, and a reload that leaves a definition
    unchanged keeps its cached credentials.
    """

    source: Hop | None
    profile: str
    calls_sts: ClassVar[bool] = True
    """False for roots resolved locally; /status counts STS calls by it."""

    @property
    @abstractmethod
    def key(self) -> str: ...

    @property
    @abstractmethod
    def label(self) -> str:
        """Human description for logs and /status; never a secret."""

    @abstractmethod
    def fetch(self, source: Credentials | None) -> Credentials:
        """Blocking: runs in a worker thread. Raises BrokerError subclasses."""

    def fetch_counted(self, source: Credentials | None, attempts: Attempts) -> Credentials:
        """``fetch``, recording its upstream HTTP attempts; what the cache calls. Providers
        that call STS override it; others leave ``attempts`` untouched."""
        return self.fetch(source)

    def chained_key(self, own: str) -> str:
        """A hop's key includes its source's, so changing a root re-keys the whole chain."""
        return f"{own}|from=({self.source.key if self.source else '-'})"

    def require_source(self, source: Credentials | None) -> Credentials:
        if source is None:
            raise InternalError(f"no source credentials for {self.label}")
        return source


def chain_of(hop: Hop) -> list[Hop]:
    """Root first, ``hop`` last."""
    hops: list[Hop] = []
    current: Hop | None = hop
    while current is not None:
        hops.append(current)
        current = current.source
    hops.reverse()
    return hops
