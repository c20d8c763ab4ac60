"""The two halves of the systemd service protocol that rolebroker speaks, in the standard
library only: readiness and reload notifications (``sd_notify``) and socket activation
(``sd_listen_fds``).

Why not python-systemd or libsystemd: both are native dependencies a ``pipx install`` on
a laptop may not have, and the wire protocols are small, documented and stable
(https://systemd.io/PORTABILITY_AND_STABILITY/). Everything here is a no-op outside
systemd, so ``rolebroker serve`` behaves the same in a terminal and under launchd.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("rolebroker.systemd")

LISTEN_FDS_START = 3
"""The first file descriptor of a socket-activation hand-over (SD_LISTEN_FDS_START)."""

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_NOTIFY_TIMEOUT = 5.0
"""Seconds a notification may block: a wedged service manager must not freeze the event loop."""


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` assignments such as ``READY=1``) to the
    service manager as one datagram on ``$NOTIFY_SOCKET``.

    Returns True when the datagram was sent, False when not running under a manager that
    asked for notifications, or when sending failed. It never raises for socket problems:
    a lost status message must not take the credentials endpoint down with it.
    """
    if not state:
        raise ValueError("a notification needs at least one KEY=VALUE assignment")
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = _unix_address(address)
    if target is None:
        # systemd >= 254 may also hand out vsock: addresses; they only matter inside VMs.
        log.debug("NOTIFY_SOCKET=%r is neither a path nor an abstract socket; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(_NOTIFY_TIMEOUT)
            sock.sendto(state.encode(), target)
    except OSError as exc:
        log.debug("cannot notify the service manager on %s: %s", address, exc)
        return False
    return True


def reloading_message(status: str | None = None) -> str:
    """The notification that starts a reload: ``RELOADING=1`` plus ``MONOTONIC_USEC``.

    systemd >= 253 (``Type=notify-reload``) requires the timestamp to tell this reload apart
    from an older one; older managers ignore the extra field, so one message fits every
    version. The daemon sends ``READY=1`` when the reload is done.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = f"RELOADING=1\nMONOTONIC_USEC={usec}"
    if status:
        message += f"\nSTATUS={status}"
    return message


def listen_sockets(
    *, environ: Mapping[str, str] | None = None, unset_env: bool = True
) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (socket activation), in order.

    Returns [] when the process was not socket-activated, including when ``LISTEN_PID``
    names another process: the variables were then inherited, not meant for us.
    Raises ValueError when the variables are meant for us but malformed, or announce a
    descriptor that is not an open socket, because serving anything else would fail later
    and less clearly.

    The descriptors are made close-on-exec and, with ``unset_env`` (the default), the
    ``LISTEN_*`` variables are removed from ``environ`` (when it is mutable, as
    ``os.environ`` is), so that ``credential_process`` helpers the daemon runs neither
    inherit the sockets nor believe they were activated. Call it once: a second call with
    ``unset_env=False`` would wrap the same descriptors twice.
    """
    return [sock for _name, sock in listen_sockets_with_names(environ=environ, unset_env=unset_env)]


def listen_sockets_with_names(
    *, environ: Mapping[str, str] | None = None, unset_env: bool = True
) -> list[tuple[str, socket.socket]]:
    """Like :func:`listen_sockets`, paired with each socket's ``FileDescriptorName=``
    (``LISTEN_FDNAMES``); systemd's default name is the socket unit's name, and
    ``"unknown"`` is used when the manager sent no names."""
    env = os.environ if environ is None else environ
    pid, count, names = (env.get(name) for name in _LISTEN_VARIABLES)
    if unset_env and isinstance(env, MutableMapping):
        for name in _LISTEN_VARIABLES:
            env.pop(name, None)

    if not pid or not count or _parse_int("LISTEN_PID", pid) != os.getpid():
        return []
    fd_count = _parse_int("LISTEN_FDS", count)
    if fd_count == 0:
        return []
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + fd_count)
    for fd in fds:
        _require_socket(fd)

    fd_names = names.split(":") if names is not None else []
    if len(fd_names) != fd_count:
        if names is not None:
            log.warning(
                "LISTEN_FDNAMES has %d names for %d descriptors; ignoring it", len(fd_names), fd_count
            )
        fd_names = ["unknown"] * fd_count

    passed: list[tuple[str, socket.socket]] = []
    for fd, name in zip(fds, fd_names, strict=True):
        os.set_inheritable(fd, False)
        passed.append((name, socket.socket(fileno=fd)))
    return passed


def socket_address(sock: socket.socket) -> tuple[str, int]:
    """The ``(host, port)`` a listening TCP socket is bound to, host without brackets
    (``"127.0.0.1"``, ``"::1"``); IPv4-mapped IPv6 addresses are returned as IPv4.

    For checking a socket we did not bind ourselves: raises ValueError for a socket the
    HTTP server could not serve (not TCP/IP, not a stream, or not listening, as with a
    unit that has ``Accept=yes``), so the caller can refuse it with one clear message.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(
            f"socket fd {sock.fileno()} is {sock.family.name}, not TCP/IP; "
            "use ListenStream=127.0.0.1:PORT in the socket unit"
        )
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(
            f"socket fd {sock.fileno()} is {sock.type.name}, not a stream socket; use ListenStream="
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError(f"socket fd {sock.fileno()} is not listening; the socket unit must use Accept=no")
    bound = sock.getsockname()
    host, port = str(bound[0]), int(bound[1])
    if sock.family == socket.AF_INET6:
        mapped = ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped
        if mapped is not None:
            host = str(mapped)
    return host, port


def _unix_address(address: str) -> bytes | None:
    """``/path`` or ``@abstract`` (the leading ``@`` stands for the NUL byte)."""
    if address.startswith("/"):
        return os.fsencode(address)
    if address.startswith("@") and len(address) > 1:
        return b"\0" + os.fsencode(address[1:])
    return None


def _parse_int(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or (name == "LISTEN_PID" and int(value) == 0):
        raise ValueError(f"{name}={value!r} is not valid; the service manager sets it to a positive number")
    return int(value)


def _require_socket(fd: int) -> None:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ValueError(f"LISTEN_FDS announces fd {fd}, but it is not open: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"LISTEN_FDS announces fd {fd}, but it is not a socket")
