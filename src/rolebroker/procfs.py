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


# -- who is on the other end of a loopback connection (see identity.py) -----------------------

_MAX_CMDLINE = 4096
"""Bytes read from one /proc/PID/cmdline: the audit log keeps a bounded command line."""


@dataclass(frozen=True, slots=True)
class SocketOwner:
    """The kernel's record of one TCP socket: the uid that created it and its inode."""

    uid: int
    inode: int


def encode_address(host: str, port: int) -> str:
    """The inverse of ``decode_address``: (``127.0.0.1``, 9927) -> ``0100007F:26C7``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host)
    words = "".join(f"{int.from_bytes(raw[i : i + 4], sys.byteorder):08X}" for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"


def _table_forms(host: str) -> list[tuple[str, str]]:
    """(table, spelling) pairs under which a loopback address can appear: an IPv4 peer may
    hold an AF_INET socket (``tcp``) or a dual-stack AF_INET6 one (``tcp6``, v4-mapped)."""
    import ipaddress

    ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return [("tcp", str(ip)), ("tcp6", f"::ffff:{ip}")]
    return [("tcp6", str(ip))]


def socket_owner(local: tuple[str, int], remote: tuple[str, int], proc: Path = PROC) -> SocketOwner | None:
    """The socket whose own address is ``local`` and whose peer is ``remote`` (for a
    connection the daemon accepted: local = the client's address, remote = the daemon's).
    One substring search per table, no per-row parsing: ~1,000 sockets cost well under a
    millisecond more than 50."""
    try:
        local_forms = _table_forms(local[0])
        remote_forms = dict(_table_forms(remote[0]))
    except ValueError:
        return None
    for table, host in local_forms:
        peer = remote_forms.get(table)
        if peer is None:
            continue
        try:
            needle = f" {encode_address(host, local[1])} {encode_address(peer, remote[1])} "
            text = (proc / "net" / table).read_text()
        except (OSError, ValueError):
            continue
        at = text.find(needle)
        while at >= 0:
            # local remote st tx:rx tr:when retrnsmt uid timeout inode ...
            fields = text[at : text.find("\n", at)].split()
            with contextlib.suppress(IndexError, ValueError):
                if int(fields[8]):  # inode 0: a TIME_WAIT leftover of an earlier connection
                    return SocketOwner(int(fields[6]), int(fields[8]))
            at = text.find(needle, at + 1)
    return None


def process_holding(
    inode: int, uid: int | None = None, proc: Path = PROC, *, exclude: int | None = None
) -> int | None:
    """The first process found with ``socket:[inode]`` open. Newest pids first (a client
    that just connected is usually young), and only processes owned by ``uid`` when given.
    ``exclude``: a pid not to walk (the daemon itself, whose many sockets are never the
    client's)."""
    wanted = f"socket:[{inode}]"
    for pid in sorted(_pids(proc), reverse=True):
        if pid == exclude:
            continue
        base = proc / str(pid)
        try:
            if uid is not None and base.stat().st_uid != uid:
                continue
            fds = os.listdir(base / "fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"{base}/fd/{fd}") == wanted:
                    return pid
    return None


def read_cmdline(pid: int, proc: Path = PROC, limit: int = _MAX_CMDLINE) -> tuple[str, ...] | None:
    """The arguments of ``pid`` from at most ``limit`` bytes (a longer command line ends with
    ``...``); None when hidden. Not made printable here: callers escape for their medium."""
    try:
        with (proc / str(pid) / "cmdline").open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError:
        return None
    cut = len(raw) > limit
    argv = [a.decode("utf-8", "replace") for a in raw[:limit].rstrip(b"\0").split(b"\0")]
    if cut:
        argv[-1] += "..."
    return tuple(argv) if raw else None


def read_link(pid: int, name: str, proc: Path = PROC) -> str | None:
    """``/proc/PID/exe`` or ``cwd``; None when hidden or gone."""
    try:
        return os.readlink(proc / str(pid) / name)
    except OSError:
        return None
