"""Runtime footprint of the real daemon; every figure is printed next to its reference.

    python bench/footprint.py [--idle 30] [--requests 4000] [--concurrency 20] [--rounds 5]
                              [--starts 5] [--baseline main]

- idle wakeups: context switches of all the daemon's threads (/proc/PID/task/*/status)
  per second over --idle seconds with one warm profile; reference: a bare FastAPI app on
  the same uvicorn stack (bench/bare_app.py), and the --baseline daemon;
- warm GET /creds/prod: requests/s and p99 from a raw keep-alive HTTP/1.1 client with
  --concurrency connections (the client costs little next to the servers it compares);
  reference: the bare app, the two measured alternately --rounds times (medians shown);
- daemon process start to the first 200 on /healthz, and a socket-activated first
  credential for the 1-hop profile dev (systemd-socket-activate, token file made
  beforehand) minus its STS round trips (STS calls from /status times the median time of
  an AssumeRole on moto, timed directly); reference: the same for the source tree of git
  ref --baseline (default main; "" skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.daemon import BASE_KEY_ID, BASE_SECRET, REPO, AwsHome, Daemon
from tests.support.moto import MotoServer
from tests.support.procs import ManagedProcess, free_port

Code = tuple[str, Path]
"""A label and the src directory the daemon runs from."""


def context_switches(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return total


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def baseline_src(ref: str, into: Path) -> Path | None:
    """The src directory of git ref ``ref`` (extracted into ``into``), or None."""
    if not ref:
        return None
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        print(f"(no baseline: git archive {ref} failed: {archive.stderr.decode().strip()})")
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


# -- a raw HTTP/1.1 client ------------------------------------------------------------------


def request_bytes(path: str, token: str | None) -> bytes:
    auth = f"Authorization: {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def load(port: int, request: bytes, total: int, concurrency: int) -> tuple[float, list[float]]:
    """``total`` requests over ``concurrency`` keep-alive connections: (requests/s, latencies ms)."""
    latencies: list[float] = []

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(count):
                start = time.perf_counter()
                writer.write(request)
                if await read_response(reader) != 200:
                    raise RuntimeError("non-200 answer")
                latencies.append((time.perf_counter() - start) * 1000)
        finally:
            writer.close()

    share, extra = divmod(total, concurrency)
    start = time.perf_counter()
    await asyncio.gather(*(connection(share + (i < extra)) for i in range(concurrency)))
    return total / (time.perf_counter() - start), latencies


def get(port: int, path: str, token: str | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (blocking): status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request_bytes(path, token)[:-2] + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# -- processes --------------------------------------------------------------------------------


@contextmanager
def bare_app() -> Iterator[ManagedProcess]:
    """The reference app on uvicorn's h11 protocol and asyncio loop, as the daemon uses."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--http", "h11", "--loop", "asyncio", "--no-access-log", "--log-level", "warning"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "HOME": str(REPO)}
    proc = ManagedProcess(argv, env, cwd=REPO)
    proc.port = port  # type: ignore[attr-defined]
    try:
        wait_healthy(port, proc)
        yield proc
    finally:
        proc.cleanup()


def wait_healthy(port: int, proc: ManagedProcess, timeout: float = 30.0) -> float:
    """Polls /healthz every 5 ms; returns when it first answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"{proc.argv} exited:\n{proc.output()[-2000:]}")
        try:
            if get(port, "/healthz", timeout=1)[0] == 200:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{proc.argv} not healthy:\n{proc.output()[-2000:]}")


def start_daemon(home: AwsHome, moto: MotoServer, src: Path) -> Daemon:
    return Daemon(home, sts_url=moto.url, extra_env={"PYTHONPATH": str(src)})


# -- the measurements ---------------------------------------------------------------------------


def idle_wakeups(moto: MotoServer, codes: list[Code], seconds: float) -> None:
    """All processes idle side by side over the same window."""
    with tempfile.TemporaryDirectory() as tmp, bare_app() as bare:
        daemons: list[tuple[str, Daemon]] = []
        try:
            for label, src in codes:
                home = AwsHome(Path(tmp) / label)
                home.write()
                daemon = start_daemon(home, moto, src)
                daemons.append((label, daemon))
                status, _ = get(daemon.port, "/creds/prod", daemon.token)
                assert status == 200, daemon.safe_output()
            time.sleep(2)  # let start-up work settle
            pids = [(label, d.process.pid) for label, d in daemons] + [("bare FastAPI app", bare.pid)]
            before = {pid: context_switches(pid) for _, pid in pids}
            time.sleep(seconds)
            rates = {label: (context_switches(pid) - before[pid]) / seconds for label, pid in pids}
        finally:
            for _, daemon in daemons:
                daemon.stop()
                daemon.process.cleanup()
    print(f"idle wakeups, one warm profile, {seconds:.0f} s (context switches/s of all threads):")
    for label, rate in rates.items():
        print(f"  {label}: {rate:.2f}/s")


def throughput(moto: MotoServer, src: Path, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, bare_app() as bare:
        home = AwsHome(Path(tmp))
        home.write()
        daemon = start_daemon(home, moto, src)
        try:
            targets = {
                "daemon": (daemon.port, request_bytes("/creds/prod", daemon.token)),
                "bare FastAPI app": (bare.port, request_bytes("/creds/prod", None)),  # type: ignore[attr-defined]
            }
            assert get(daemon.port, "/creds/prod", daemon.token)[0] == 200
            rates: dict[str, list[float]] = {name: [] for name in targets}
            p99s: dict[str, list[float]] = {name: [] for name in targets}
            for port, request in targets.values():  # warm-up
                asyncio.run(load(port, request, 500, args.concurrency))
            for _ in range(args.rounds):
                for name, (port, request) in targets.items():
                    rate, latencies = asyncio.run(load(port, request, args.requests, args.concurrency))
                    rates[name].append(rate)
                    p99s[name].append(percentile(latencies, 0.99))
        finally:
            daemon.stop()
            daemon.process.cleanup()
    print(
        f"warm GET /creds/prod, {args.concurrency} keep-alive connections, {args.rounds} rounds of "
        f"{args.requests} (medians):"
    )
    for name in targets:
        rate, p99 = statistics.median(rates[name]), statistics.median(p99s[name])
        print(f"  {name}: {rate:.0f} requests/s, p99 {p99:.2f} ms")
    ratio = statistics.median(rates["daemon"]) / statistics.median(rates["bare FastAPI app"])
    print(f"  daemon/bare throughput: {ratio:.2f}")


def start_to_healthz(moto: MotoServer, src: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        home = AwsHome(Path(tmp))
        home.write()
        port = free_port()
        env = {**home.env(moto.url), "PYTHONPATH": str(src)}
        start = time.perf_counter()
        proc = ManagedProcess(
            [sys.executable, "-m", "rolebroker", "serve", "--port", str(port)], env, home.root
        )
        try:
            return (wait_healthy(port, proc) - start) * 1000
        finally:
            proc.cleanup()


def listening(port: int) -> bool:
    wanted = f":{port:04X} "
    return any(
        wanted in line and line.split()[3] == "0A"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
    )


def activated_first_credential(moto: MotoServer, src: Path, tool: str) -> tuple[float, int]:
    """ms from connect to the full answer for /creds/dev, with the daemon started by that
    connection; and the STS calls it made."""
    with tempfile.TemporaryDirectory() as tmp:
        home = AwsHome(Path(tmp))
        home.write()
        token = "bench" + "x" * 40
        home.token_file.parent.mkdir(mode=0o700)
        home.token_file.write_text(token)
        home.token_file.chmod(0o600)
        port = free_port()
        env = {**home.env(moto.url), "PYTHONPATH": str(src)}
        cmd = [tool, "-l", f"127.0.0.1:{port}", *(a for k, v in env.items() for a in ("-E", f"{k}={v}"))]
        cmd += ["--", sys.executable, "-m", "rolebroker", "serve"]
        proc = ManagedProcess(cmd, {"PATH": env["PATH"], "HOME": env["HOME"]}, home.root)
        try:
            deadline = time.monotonic() + 10
            while not listening(port):
                if time.monotonic() > deadline:
                    raise TimeoutError(proc.output())
                time.sleep(0.01)
            start = time.perf_counter()
            status, body = get(port, "/creds/dev", token)
            elapsed = (time.perf_counter() - start) * 1000
            assert status == 200, body[:200]
            sts_calls = int(json.loads(get(port, "/status", token)[1])["sts_calls_total"])
            return elapsed, sts_calls
        finally:
            proc.cleanup()


def assume_role_ms(moto: MotoServer, count: int = 7) -> float:
    """The median STS round trip on moto, from a warm client: what no daemon can save."""
    client = boto3.client(
        "sts",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id=BASE_KEY_ID,
        aws_secret_access_key=BASE_SECRET,
    )
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        client.assume_role(RoleArn="arn:aws:iam::111111111111:role/dev", RoleSessionName="bench")
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def startup(moto: MotoServer, codes: list[Code], starts: int) -> None:
    healthz: dict[str, list[float]] = {label: [] for label, _ in codes}
    first: dict[str, list[tuple[float, int]]] = {label: [] for label, _ in codes}
    tool = shutil.which("systemd-socket-activate")
    for _ in range(starts):  # alternately, so that load on the machine hits both alike
        for label, src in codes:
            healthz[label].append(start_to_healthz(moto, src))
            if tool:
                first[label].append(activated_first_credential(moto, src, tool))
    sts_ms = assume_role_ms(moto)
    print(f"daemon start to first 200 on /healthz (median of {starts}):")
    for label, values in healthz.items():
        print(f"  {label}: {statistics.median(values):.0f} ms")
    if not tool:
        print("socket-activated first credential: skipped (no systemd-socket-activate)")
        return
    print(
        f"socket-activated first GET /creds/dev (1 hop; median of {starts}); "
        f"STS AssumeRole on moto {sts_ms:.1f} ms:"
    )
    for label, runs in first.items():
        total = statistics.median(t for t, _ in runs)
        calls = max(c for _, c in runs)
        overhead = total - calls * sts_ms
        print(f"  {label}: {total:.0f} ms total, {calls} STS call(s), daemon overhead {overhead:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--baseline", default="main", help='git ref to compare with ("" for none)')
    parser.add_argument("--only", choices=["idle", "throughput", "startup"], action="append")
    args = parser.parse_args()
    only: Callable[[str], bool] = lambda part: not args.only or part in args.only  # noqa: E731

    moto = MotoServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            codes: list[Code] = [("this tree", REPO / "src")]
            baseline = baseline_src(args.baseline, Path(tmp))
            if baseline is not None:
                codes.append((f"baseline {args.baseline}", baseline))
            if only("idle"):
                idle_wakeups(moto, codes, args.idle)
            if only("throughput"):
                throughput(moto, REPO / "src", args)
            if only("startup"):
                startup(moto, codes, args.starts)
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
