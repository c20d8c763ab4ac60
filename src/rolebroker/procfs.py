"""What Linux's /proc tells about who holds a port and who still uses a token.

Used to name a squatter (a listening socket of another user on our port) and the shells
that must re-export a rotated token. Everything here is best effort: outside Linux, or for
processes of other users (their /proc/PID/fd is private), the answers are partial, and
callers say so rather than guess.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import pwd
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"
_MAX_ENVIRON = 1 << 20
"""Bytes read from one /proc/PID/environ: a bound on work, far above any real environment."""


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    command: str


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket from /proc/net/tcp{,6}."""

    host: str
    port: int
    uid: int
    inode: int
    processes: tuple[Process, ...] = field(default=())

    @property
    def user(self) -> str | None:
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(self.uid).pw_name
        return None

    def describe(self) -> str:
        """``uid 4242 (alice), pid 77 (python3 -m http.server)``, as much as is visible."""
        who = f"uid {self.uid}" + (f" ({self.user})" if self.user else "")
        if self.processes:
            who += ", " + ", ".join(f"pid {p.pid} ({p.command})" for p in self.processes)
        else:
            who += ", process not visible to this user"
        address = f"[{self.host}]" if ":" in self.host else self.host
        return f"{address}:{self.port} held by {who}"


def decode_address(hex_address: str) -> tuple[str, int]:
    """``0100007F:26C7`` -> (``127.0.0.1``, 9927): the kernel prints each 32-bit word of the
    address in host byte order, the port as plain hex."""
    host_hex, _, port_hex = hex_address.partition(":")
    raw = bytes.fromhex(host_hex)
    words = b"".join(
        int.from_bytes(raw[i : i + 4], "big").to_bytes(4, sys.byteorder) for i in range(0, len(raw), 4)
    )
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port_hex, 16)


def parse_listeners(table: str) -> list[Listener]:
    """Listening sockets of one /proc/net/tcp or tcp6 table (header line skipped)."""
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        try:
            host, port = decode_address(fields[1])
            found.append(Listener(host, port, int(fields[7]), int(fields[9])))
        except ValueError:
            continue
    return found


def listeners_on(port: int, proc: Path = PROC) -> list[Listener]:
    """Every listening socket on ``port``, v4 and v6, with the processes that hold it where
    their descriptors are visible to us."""
    sockets: list[Listener] = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            sockets += [s for s in parse_listeners((proc / "net" / table).read_text()) if s.port == port]
    if not sockets:
        return []
    holders = socket_holders({s.inode for s in sockets}, proc)
    return [Listener(s.host, s.port, s.uid, s.inode, tuple(holders.get(s.inode, ()))) for s in sockets]


def holders_of(host: str, port: int, proc: Path = PROC) -> list[Listener]:
    """The listening sockets that keep ``host:port`` from us: that address or a wildcard."""
    clashing = {host, "::"} | ({"0.0.0.0"} if ":" not in host else set())
    return [found for found in listeners_on(port, proc) if found.host in clashing]


def socket_holders(inodes: set[int], proc: Path = PROC) -> dict[int, list[Process]]:
    """Which processes hold these socket inodes open (``/proc/PID/fd/N -> socket:[INODE]``)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    holders: dict[int, list[Process]] = {}
    for pid in _pids(proc):
        with contextlib.suppress(OSError):
            for fd in (proc / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    inode = wanted.get(os.readlink(fd))
                    if inode is not None:
                        holders.setdefault(inode, []).append(Process(pid, command_of(pid, proc)))
                        break
    return holders


def command_of(pid: int, proc: Path = PROC) -> str:
    """The command line, shortened for one log line; ``?`` when hidden."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    # One line, printable only: a command line is chosen by its owner, who may be hostile.
    text = " ".join(
        "".join(c if c.isprintable() else " " for c in a.decode("utf-8", "replace")) for a in argv
    )
    text = " ".join(text.split())
    return text if len(text) <= 120 else text[:117] + "..."


def processes_exporting(name: str, value: str, proc: Path = PROC) -> list[Process]:
    """Our own processes whose environment has ``name=value`` (e.g. the token a shell
    exported with ``rolebroker env``). Other users' environments are unreadable anyway."""
    wanted = f"{name}={value}".encode()
    me = os.getuid()
    found = []
    for pid in _pids(proc):
        if pid == os.getpid():
            continue
        path = proc / str(pid) / "environ"
        with contextlib.suppress(OSError):
            if path.stat().st_uid != me:
                continue
            with path.open("rb") as handle:
                entries = handle.read(_MAX_ENVIRON).split(b"\0")
            if any(_same(entry, wanted) for entry in entries):
                found.append(Process(pid, command_of(pid, proc)))
    return found


def _same(entry: bytes, wanted: bytes) -> bool:
    return len(entry) == len(wanted) and hmac.compare_digest(entry, wanted)


def _pids(proc: Path) -> Iterator[int]:
    try:
        names: Iterable[str] = os.listdir(proc)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)
