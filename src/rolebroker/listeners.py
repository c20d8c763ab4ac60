"""The daemon's listening sockets: both loopback families on one port, passed by the service
manager (systemd or launchd socket activation) or bound here.

Holding 127.0.0.1 *and* [::1] matters because any local user may bind a free port: a
client that resolves ``localhost`` to ::1 first would otherwise talk to whoever took
[::1]:PORT. A port someone else holds is reported with its owner and a distinct exit
status, so a service manager does not restart into the same wall forever.

systemd may also pass the container port (systemd/rolebroker-containers.socket, named
``containers``): it is set aside here for the container listener, never served as loopback.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

from rolebroker import launchd, procfs, systemd
from rolebroker.config import is_loopback_host

log = logging.getLogger("rolebroker")

EX_CONFIG = 78
"""sysexits.h: the configuration (here: the port) is unusable; restarting cannot help."""
BACKLOG = 2048
LOOPBACKS = ("127.0.0.1", "::1")
_NO_ADDRESS = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)


class ListenError(Exception):
    """The daemon cannot listen where it must; ``status`` is the exit code to use."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


CONTAINER_FD_NAME = "containers"
"""``FileDescriptorName=`` of systemd/rolebroker-containers.socket."""


@dataclass(frozen=True, slots=True)
class Listeners:
    sockets: list[socket.socket]
    activated: bool
    """True when the service manager passed (some of) the loopback sockets."""
    container: socket.socket | None = None
    """The container port, when the service manager holds it for us
    (rolebroker-containers.socket): the container listener serves it instead of binding."""

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [systemd.socket_address(s) for s in self.sockets]

    def describe(self) -> str:
        return ", ".join(_show(host, port) for host, port in self.addresses)


def open_listeners(host: str, port: int, *, container_address: str | None = None) -> Listeners:
    """The sockets to serve: the passed ones completed with the missing loopback family, or
    both families bound here on ``host``'s port. A passed socket on ``container_address`` (or
    named ``containers``) becomes :attr:`Listeners.container`."""
    passed, container = inherited_sockets(container_address)
    try:
        listeners = _loopback_listeners(host, port, passed)
    except BaseException:
        if container is not None:
            container.close()
        raise
    return Listeners(listeners.sockets, listeners.activated, container)


def _loopback_listeners(host: str, port: int, passed: list[socket.socket]) -> Listeners:
    if passed:
        held = [systemd.socket_address(s) for s in passed]
        extra: list[socket.socket] = []
        for passed_port in dict.fromkeys(p for _h, p in held):
            hosts = {h for h, p in held if p == passed_port}
            if hosts & set(LOOPBACKS):
                extra += _bind_missing([h for h in LOOPBACKS if h not in hosts], passed_port)
        return Listeners([*passed, *extra], activated=True)

    wanted = list(LOOPBACKS) if host in (*LOOPBACKS, "localhost") else [host]
    if host == "::1":
        wanted.reverse()
    primary = _bind_or_explain(wanted[0], port)
    if primary is None:
        raise ListenError(f"cannot listen on {_show(wanted[0], port)}: the address does not exist here")
    actual_port = int(primary.getsockname()[1])
    try:
        rest = _bind_missing(wanted[1:], actual_port)
    except BaseException:
        primary.close()
        raise
    return Listeners([primary, *rest], activated=False)


def inherited_sockets(
    container_address: str | None = None,
) -> tuple[list[socket.socket], socket.socket | None]:
    """Sockets passed by systemd or launchd: (the loopback ones, the container port or None).
    Refused unless they are TCP listeners on loopback, or the container port."""
    try:
        named = systemd.listen_sockets_with_names()
        if not named:
            named = [("unknown", sock) for sock in launchd.activated_sockets()]
        return sort_passed(named, container_address)
    except ValueError as exc:
        raise ListenError(str(exc)) from None


def sort_passed(
    named: list[tuple[str, socket.socket]], container_address: str | None
) -> tuple[list[socket.socket], socket.socket | None]:
    """Split passed ``(name, socket)`` pairs into loopback listeners and the container port.

    The container port is the socket named :data:`CONTAINER_FD_NAME` or bound to
    ``container_address``. One named so but bound elsewhere (say 0.0.0.0, which would face
    the LAN) is closed with a warning, and so is a second one: the container listener is then
    off or served once, and the loopback endpoint goes on. Any other non-loopback socket is
    refused (ValueError), as it always was."""
    loopback: list[socket.socket] = []
    container: socket.socket | None = None
    for name, sock in named:
        host, port = systemd.socket_address(sock)
        if name == CONTAINER_FD_NAME or (container_address is not None and host == container_address):
            where = _show(host, port)
            if container_address is None or host != container_address:
                log.warning(
                    "container listener: the socket named %r is bound to %s, not %s; not serving it "
                    "(ListenStream=%s:PORT in rolebroker-containers.socket)",
                    name,
                    where,
                    container_address or "the container address",
                    container_address or "169.254.170.2",
                )
                sock.close()
            elif container is not None:
                log.warning(
                    "container listener: the service manager passed a second socket on %s; serving "
                    "only the first (keep one ListenStream= in rolebroker-containers.socket)",
                    where,
                )
                sock.close()
            else:
                container = sock
            continue
        if not is_loopback_host(host):
            raise ValueError(
                f"the socket passed by the service manager is bound to {host}:{port}, not loopback; "
                "rolebroker only serves 127.0.0.1, ::1 or localhost"
            )
        loopback.append(sock)
    return loopback, container


def _bind_missing(hosts: list[str], port: int) -> list[socket.socket]:
    bound = []
    try:
        for host in hosts:
            sock = _bind_or_explain(host, port)
            if sock is None:
                log.warning("%s is not available on this machine; not listening there", host)
            else:
                bound.append(sock)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _bind_or_explain(host: str, port: int) -> socket.socket | None:
    """A listening socket on host:port; None when the address does not exist here (no IPv6);
    ListenError with the holder when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY on accepted connections only when
        # the listener's proto says TCP; with proto 0 a keep-alive request waits ~40 ms (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        if exc.errno in _NO_ADDRESS:
            return None
        raise
    try:
        # SO_REUSEADDR only skips TIME_WAIT after a restart; it never lets us (or anyone)
        # share a port that is listening.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno in _NO_ADDRESS:
            return None
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(port_taken_message(host, port), EX_CONFIG) from None
        raise ListenError(f"cannot listen on {_show(host, port)}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def port_taken_message(host: str, port: int) -> str:
    holders = procfs.holders_of(host, port)
    if holders:
        who = "; ".join(h.describe() for h in holders)
    else:
        who = "its holder is not visible here (no /proc/net/tcp)"
    return (
        f"cannot listen on {_show(host, port)}: the port is already taken: {who}. If that is not "
        "another rolebroker of yours, another user may be squatting the port to catch the token. "
        f"Stop that process, or pick another port: rolebroker serve --port PORT, ROLEBROKER_PORT=PORT, "
        "or port = PORT in config.toml (and the same port in rolebroker.socket). Socket activation "
        "(rolebroker.socket) keeps the port held while the daemon is stopped"
    )


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
