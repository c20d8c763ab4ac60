"""Who is calling: the uid and process behind a loopback TCP connection, from Linux's /proc.

The kernel names the uid that created the client's socket and its inode (asked by address
pair over netlink sock_diag, else read from ``/proc/net/tcp``, ``tcp6``: see sockdiag.py);
the process holding that inode is found in ``/proc/PID/fd``.
A uid from the kernel cannot be forged by the client; the process details (exe, command line,
cwd) are what that process shows and are for the audit log, not for decisions.

Behind a NAT redirect (``rolebroker port80``) the client's socket still names the address it
dialled (port 80), not the daemon's: the accepted socket's original destination
(``original_destination``, from conntrack) says where to look it up.

Blocking (it reads /proc): call ``lookup_peer`` off the event loop, once per connection.
Outside Linux, or when the socket is already gone, every field is None; it never raises.
Why not psutil: ``psutil.net_connections`` parses every row of every table and maps every
fd of every process on each call, where this asks the kernel for one socket and stops at the
first process holding its inode; psutil adds nothing for these five fields.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebroker import procfs, sockdiag


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """What the kernel says about the other end of a connection; None where unknown."""

    uid: int | None = None
    pid: int | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] | None = None
    cwd: str | None = None


UNKNOWN = CallerIdentity()


def lookup_peer(
    local: tuple[str, int],
    peer: tuple[str, int],
    *,
    proc: Path = procfs.PROC,
    find_process: bool = True,
    exclude: int | None = None,
    original: tuple[str, int] | None = None,
) -> CallerIdentity:
    """The identity of ``peer`` connected to the daemon's ``local`` address.

    ``local`` and ``peer`` are what the server sees (``sockname`` and ``peername``): the
    client's socket is the row whose own address is ``peer`` and whose remote is ``local``.
    ``exclude``: a pid whose files are not walked (the daemon passes its own).
    ``original`` is where the client connected before a NAT redirect moved the connection
    to ``local`` (:func:`original_destination`; ``rolebroker port80``'s rule): the client's
    socket still names that address as its remote, so it is looked up there too.
    """
    try:
        owner = _socket_owner(_host_port(peer), _host_port(local), proc)
        if owner is None and original is not None and _host_port(original) != _host_port(local):
            owner = _socket_owner(_host_port(peer), _host_port(original), proc)
    except Exception:  # best effort by contract: an identity never breaks a request
        return UNKNOWN
    if owner is None:
        return UNKNOWN
    if not find_process:
        return CallerIdentity(uid=owner.uid)
    pid = None
    with contextlib.suppress(Exception):
        pid = procfs.process_holding(owner.inode, owner.uid, proc, exclude=exclude)
    if pid is None:
        return CallerIdentity(uid=owner.uid)
    return CallerIdentity(
        uid=owner.uid,
        pid=pid,
        exe=procfs.read_link(pid, "exe", proc),
        cmdline=procfs.read_cmdline(pid, proc),
        cwd=procfs.read_link(pid, "cwd", proc),
    )


_SO_ORIGINAL_DST = 80
"""netfilter's getsockopt (``linux/netfilter_ipv4.h``; ``IP6T_SO_ORIGINAL_DST`` has the same
number): the destination a connection had before NAT, from conntrack. No privilege needed."""


def original_destination(sock: Any) -> tuple[str, int] | None:
    """Where the client of an accepted ``sock`` (a socket, or asyncio's wrapper of one)
    connected before a NAT redirect, or None (no NAT, no conntrack, not Linux). One
    syscall, no I/O: cheap enough for the event loop."""
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)  # struct sockaddr_in
            port, address = struct.unpack_from("!2xH4s", raw)
            return socket.inet_ntop(socket.AF_INET, address), port
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, _SO_ORIGINAL_DST, 28)  # struct sockaddr_in6
            (port,) = struct.unpack_from("!2xH", raw)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    except (OSError, AttributeError, struct.error, ValueError):
        return None
    return None


def _socket_owner(local: tuple[str, int], remote: tuple[str, int], proc: Path) -> procfs.SocketOwner | None:
    """netlink first (one hash lookup in the kernel), the /proc tables when it is unavailable
    (or when a test hands in a fake /proc)."""
    if proc == procfs.PROC:
        with contextlib.suppress(sockdiag.SockDiagUnavailable):
            return sockdiag.socket_owner(local, remote)
    return procfs.socket_owner(local, remote, proc)


def _host_port(address: tuple[str, int] | tuple[str, int, int, int]) -> tuple[str, int]:
    """An asyncio ``peername`` (2-tuple for v4, 4-tuple for v6) -> (host, port)."""
    return str(address[0]), int(address[1])
