"""What finding a caller's uid and process costs, with few and with many open sockets.

    .venv/bin/python bench/identity.py [--sockets 50,1000] [--rounds 200]

For each N: this process holds N loopback connections (2N sockets, both ends, like a busy
daemon and its clients), and a separate small client process connects once; ``lookup_peer``
is timed for that client's connection: the uid alone (netlink sock_diag, else /proc/net/tcp),
the full identity (plus the /proc/*/fd scan), and the /proc/net/tcp fallback alone. Last,
the worst case for the fd scan: the caller itself holds the N connections. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rolebroker import procfs
from rolebroker.identity import lookup_peer

_CLIENT = "import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); sys.stdin.read()"


def _time(rounds: int, probe: Callable[[], object]) -> str:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        found = probe()
        times.append((time.perf_counter() - start) * 1000)
        assert found is not None, "lookup failed"
    return f"median {statistics.median(times):6.2f} ms, max {max(times):6.2f} ms"


def _pairs(stack: contextlib.ExitStack, server: socket.socket, count: int) -> list[tuple[Any, Any]]:
    pairs = []
    for _ in range(count):
        client = stack.enter_context(socket.socket())
        client.connect(server.getsockname())
        accepted, peer = server.accept()
        stack.enter_context(accepted)
        pairs.append((accepted.getsockname(), peer))
    return pairs


def _measure(local: Any, peer: Any, busy_pair: tuple[Any, Any], rounds: int) -> list[str]:
    few = max(10, rounds // 4)
    return [
        _time(rounds, lambda: lookup_peer(local, peer, find_process=False).uid),
        _time(few, lambda: lookup_peer(local, peer).pid),
        _time(few, lambda: procfs.socket_owner(peer, local)),
        _time(few, lambda: lookup_peer(busy_pair[0], busy_pair[1]).pid),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", default="50,1000")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tcp_rows = len(Path("/proc/net/tcp").read_text().splitlines()) - 1
    print(f"TCP sockets already in this network namespace (/proc/net/tcp rows): {tcp_rows}")
    for count in (int(n) for n in args.sockets.split(",")):
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(socket.socket())
            server.bind(("127.0.0.1", 0))
            server.listen(count + 8)
            pairs = _pairs(stack, server, count)
            child = subprocess.Popen(
                [sys.executable, "-c", _CLIENT, str(server.getsockname()[1])], stdin=subprocess.PIPE
            )
            try:
                accepted, peer = server.accept()
                stack.enter_context(accepted)
                results = _measure(accepted.getsockname(), peer, pairs[count // 2], args.rounds)
            finally:
                assert child.stdin is not None
                child.stdin.close()
                child.wait(10)
            print(f"{count:>5} connections held ({2 * count} sockets):")
            for what, figures in zip(
                (
                    "uid only (sock_diag)",
                    "uid + pid, exe, cmdline, cwd",
                    "uid via /proc/net/tcp (fallback)",
                    f"uid + process, caller holding {2 * count} fds",
                ),
                results,
                strict=True,
            ):
                print(f"   {what:<44} {figures}")


if __name__ == "__main__":
    main()
