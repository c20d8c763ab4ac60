"""One TCP socket's uid and inode from the kernel by its address pair (Linux sock_diag).

``/proc/net/tcp`` (and ``tcp6``, which walks the same hash tables) is printed in full on every
read: its cost grows with every TCP socket in the network namespace, anyone's, including
TIME_WAIT leftovers (about 4 ms per table at 1,300 sockets on a 2-core machine). A netlink
``SOCK_DIAG_BY_FAMILY`` request without the dump flag asks the kernel for exactly one socket
by its four-tuple: a hash lookup, whatever the number of sockets. No privilege is needed.
Callers fall back to ``procfs.socket_owner`` when this is unavailable (not Linux, netlink
refused).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from rolebroker.procfs import SocketOwner

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NO_COOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2: family, protocol, ext, pad, states
_SOCKID = struct.Struct("!HH16s16s")  # inet_diag_sockid: sport, dport, src, dst (network order)
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie[2]
_MESSAGE_TAIL = struct.Struct("=IIIII")  # inet_diag_msg after the sockid: expires, rq, wq, uid, inode
_TIMEOUT = 0.5


class SockDiagUnavailable(OSError):
    """netlink sock_diag cannot be used here: the caller falls back to /proc."""


def _packed(family: int, host: str) -> bytes:
    raw = socket.inet_pton(family, host)
    return raw.ljust(16, b"\0")


def _request(family: int, local: tuple[str, int], remote: tuple[str, int], seq: int) -> bytes:
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
        + _SOCKID.pack(local[1], remote[1], _packed(family, local[0]), _packed(family, remote[0]))
        + _SOCKID_TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
    )
    return _HEADER.pack(_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, seq, 0) + body


def _forms(host: str) -> list[tuple[int, str]]:
    """The families and spellings under which the kernel may hold a loopback socket."""
    ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return [(socket.AF_INET, str(ip)), (socket.AF_INET6, f"::ffff:{ip}")]
    return [(socket.AF_INET6, str(ip))]


def socket_owner(local: tuple[str, int], remote: tuple[str, int]) -> SocketOwner | None:
    """Like ``procfs.socket_owner``: the socket whose own address is ``local`` and whose
    peer is ``remote``. None when no such socket exists; SockDiagUnavailable when netlink
    cannot answer at all."""
    try:
        local_forms, remote_forms = _forms(local[0]), dict(_forms(remote[0]))
    except ValueError:
        return None
    try:
        channel = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError) as exc:
        raise SockDiagUnavailable(str(exc)) from None
    with channel:
        channel.settimeout(_TIMEOUT)
        for seq, (family, host) in enumerate(local_forms, start=1):
            peer = remote_forms.get(family)
            if peer is None:
                continue
            try:
                channel.send(_request(family, (host, local[1]), (peer, remote[1]), seq))
                reply = channel.recv(8192)
            except OSError as exc:
                raise SockDiagUnavailable(str(exc)) from None
            found = _parse(reply)
            if found is not None:
                return found
    return None


def _parse(reply: bytes) -> SocketOwner | None:
    if len(reply) < _HEADER.size:
        raise SockDiagUnavailable("short netlink answer")
    _, kind, _, _, _ = _HEADER.unpack_from(reply)
    if kind == _NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, _HEADER.size)
        if -error in (0, errno.ENOENT):
            return None
        raise SockDiagUnavailable(os.strerror(-error))
    if kind != _SOCK_DIAG_BY_FAMILY:
        return None
    offset = _HEADER.size + 4 + _SOCKID.size + _SOCKID_TAIL.size
    if len(reply) < offset + _MESSAGE_TAIL.size:
        raise SockDiagUnavailable("short sock_diag message")
    _, _, _, uid, inode = _MESSAGE_TAIL.unpack_from(reply, offset)
    return SocketOwner(uid, inode) if inode else None
