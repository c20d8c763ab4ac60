"""Setting up, and checking, the private mount+net namespace."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
from pathlib import Path

from tests.support.netns.constants import LOOPBACK


def loopback_up() -> None:
    """A new network namespace starts with ``lo`` down: bring it up (SIOCSIFFLAGS), without
    depending on iproute2."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def assert_private_namespace(outer_mount_ns: str) -> None:
    """Refuse to touch /etc/resolv.conf unless we really are in our own mount and network
    namespaces: run by mistake on a host, the bind mount would hijack its DNS."""
    if os.readlink("/proc/self/ns/mnt") == outer_mount_ns:
        raise RuntimeError("not in a private mount namespace (run me through unshare --mount)")
    interfaces = {name for _index, name in socket.if_nameindex()}
    if interfaces - {"lo"}:
        raise RuntimeError(f"not in a private network namespace: interfaces {sorted(interfaces)}")


def bind_resolv_conf(directory: Path, nameserver: str = LOOPBACK) -> None:
    """Point the C resolver (which Node's dns.lookup uses) at our responder. The bind
    mount lives in the private mount namespace only and disappears with it."""
    conf = directory / "resolv.conf"
    conf.write_text(f"nameserver {nameserver}\noptions timeout:1 attempts:2\n")
    target = Path("/etc/resolv.conf").resolve()
    if not target.exists():
        return  # no resolv.conf at all: glibc already defaults to a nameserver on loopback
    subprocess.run(["mount", "--bind", str(conf), str(target)], check=True, timeout=10)
