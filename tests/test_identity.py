"""Caller identity from the kernel, with real loopback sockets (and a fake /proc for the parser)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolebroker import identity, procfs, sockdiag
from rolebroker.identity import CallerIdentity, lookup_peer
from tests.support.ci import skip_or_fail

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")

_HAS_V6 = socket.has_ipv6 and Path("/proc/net/tcp6").exists()


@contextlib.contextmanager
def connection(family: int, host: str) -> Iterator[tuple[socket.socket, tuple[str, int], tuple[str, int]]]:
    """A connection from this process to a listener of this process: (client, local, peer)."""
    with socket.socket(family) as server, socket.socket(family) as client:
        server.bind((host, 0))
        server.listen()
        client.connect(server.getsockname()[:2])
        accepted, peer = server.accept()
        with accepted:
            yield client, accepted.getsockname()[:2], peer[:2]


@pytest.mark.parametrize(
    ("family", "host"),
    [
        (socket.AF_INET, "127.0.0.1"),
        pytest.param(
            socket.AF_INET6, "::1", marks=pytest.mark.skipif(not _HAS_V6, reason="no IPv6 loopback")
        ),
    ],
)
def test_own_connection_names_our_uid_and_pid(family: int, host: str) -> None:
    with connection(family, host) as (_, local, peer):
        found = lookup_peer(local, peer)
    assert found.uid == os.getuid()
    assert found.pid == os.getpid()
    assert found.exe == os.readlink("/proc/self/exe")
    assert found.cwd == os.getcwd()
    argv0 = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode("utf-8", "replace")
    assert found.cmdline is not None and found.cmdline[0] == argv0


def test_the_proc_table_fallback_agrees_with_netlink() -> None:
    with connection(socket.AF_INET, "127.0.0.1") as (client, local, peer):
        inode = os.fstat(client.fileno()).st_ino
        assert procfs.socket_owner(peer, local) == procfs.SocketOwner(os.getuid(), inode)
        assert sockdiag.socket_owner(peer, local) == procfs.SocketOwner(os.getuid(), inode)


def test_without_netlink_the_proc_tables_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_: object) -> None:
        raise sockdiag.SockDiagUnavailable("netlink refused")

    monkeypatch.setattr(sockdiag, "socket_owner", refused)
    with connection(socket.AF_INET, "127.0.0.1") as (_, local, peer):
        found = lookup_peer(local, peer)
    assert (found.uid, found.pid) == (os.getuid(), os.getpid())


@pytest.mark.skipif(not _HAS_V6, reason="no IPv6 loopback")
def test_v4_mapped_addresses_either_way() -> None:
    # A dual-stack daemon socket sees an IPv4 client as ::ffff:127.0.0.1 ...
    with socket.socket(socket.AF_INET6) as server, socket.socket() as client:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::ffff:127.0.0.1", 0))
        server.listen()
        client.connect(("127.0.0.1", server.getsockname()[1]))
        accepted, peer = server.accept()
        with accepted:
            assert peer[0] == "::ffff:127.0.0.1"
            found = lookup_peer(accepted.getsockname(), peer)
            inode = os.fstat(client.fileno()).st_ino
            assert procfs.socket_owner(peer[:2], accepted.getsockname()[:2]).inode == inode  # type: ignore[union-attr]
    assert (found.uid, found.pid) == (os.getuid(), os.getpid())
    # ... and a dual-stack client socket talks to an IPv4 daemon with a mapped address.
    with socket.socket() as server, socket.socket(socket.AF_INET6) as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        client.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
        accepted, peer = server.accept()
        with accepted:
            inode = os.fstat(client.fileno()).st_ino
            assert procfs.socket_owner(peer, accepted.getsockname()).inode == inode  # type: ignore[union-attr]
            found = lookup_peer(accepted.getsockname(), peer)
    assert (found.uid, found.pid) == (os.getuid(), os.getpid())


_CLIENT = (
    "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); "
    "print('connected', flush=True); sys.stdin.read()"
)


@pytest.mark.skipif(os.getuid() != 0, reason="running a process as uid 4242 needs root")
@pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not _HAS_V6, reason="no v6"))]
)
def test_another_users_connection_reports_that_uid(host: str) -> None:
    if not shutil.which("setpriv"):
        skip_or_fail("setpriv (util-linux) is not installed")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        child = subprocess.Popen(
            [
                "setpriv",
                "--reuid",
                "4242",
                "--regid",
                "4242",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                _CLIENT,
                host,
                str(server.getsockname()[1]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            server.settimeout(10)
            accepted, peer = server.accept()
            with accepted:
                found = lookup_peer(accepted.getsockname(), peer)
                uid_only = lookup_peer(accepted.getsockname(), peer, find_process=False)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)
    assert found.uid == 4242 and uid_only == CallerIdentity(uid=4242)
    assert found.pid == child.pid  # setpriv execs python: same pid
    assert found.cmdline is not None and found.cmdline[0] == "/usr/bin/python3"


def test_unknown_connections_give_none_never_raise() -> None:
    with socket.socket() as probe:  # a port nobody connects from
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        assert lookup_peer(("127.0.0.1", 9), ("127.0.0.1", port)) == identity.UNKNOWN
    assert lookup_peer(("not an address", 1), ("127.0.0.1", 2)) == identity.UNKNOWN
    assert lookup_peer(("127.0.0.1", 1), ("127.0.0.1", 70000)) == identity.UNKNOWN


def _fake_proc(tmp_path: Path, rows: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    )
    (proc / "net" / "tcp").write_text(header + rows)
    (proc / "net" / "tcp6").write_text(header)
    for pid, target in ((10, "socket:[555]"), (20, "socket:[777]")):
        (proc / str(pid) / "fd").mkdir(parents=True)
        os.symlink(target, proc / str(pid) / "fd" / "3")
        (proc / str(pid) / "cmdline").write_bytes(b"curl\0-H\0x\x1b[31m\0")
        os.symlink("/usr/bin/curl", proc / str(pid) / "exe")
        os.symlink("/home/u", proc / str(pid) / "cwd")
    return proc


def test_fake_proc_table_skips_time_wait_rows_and_finds_the_holder(tmp_path: Path) -> None:
    peer, local = ("127.0.0.1", 40000), ("127.0.0.1", 9911)
    pair = f"{procfs.encode_address(*peer)} {procfs.encode_address(*local)}"
    assert pair == "0100007F:9C40 0100007F:26B7" or sys.byteorder == "big"
    rows = (
        f"   0: {pair} 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0\n"
        f"   1: {pair} 01 00000000:00000000 00:00000000 00000000  {os.getuid()}        0 777 1 0\n"
    )
    proc = _fake_proc(tmp_path, rows)
    found = lookup_peer(local, peer, proc=proc)
    assert found == CallerIdentity(os.getuid(), 20, "/usr/bin/curl", ("curl", "-H", "x\x1b[31m"), "/home/u")


def test_fake_proc_holder_owned_by_another_uid_is_not_taken(tmp_path: Path) -> None:
    peer, local = ("127.0.0.1", 40000), ("127.0.0.1", 9911)
    pair = f"{procfs.encode_address(*peer)} {procfs.encode_address(*local)}"
    rows = f"   1: {pair} 01 00000000:00000000 00:00000000 00000000  4242        0 777 1 0\n"
    proc = _fake_proc(tmp_path, rows)
    assert lookup_peer(local, peer, proc=proc) == CallerIdentity(uid=4242)


def test_cmdline_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "cmdline").write_bytes(b"a" * 10_000 + b"\0b\0")
    argv = procfs.read_cmdline(5, tmp_path, limit=100)
    assert argv == ("a" * 100 + "...",)
    assert procfs.read_cmdline(6, tmp_path) is None
