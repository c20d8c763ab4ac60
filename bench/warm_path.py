"""Warm-path latency and memory of the real daemon: prints figures, asserts nothing.

    python bench/warm_path.py [--requests 2000] [--concurrency 20] [--unknown-names 20000] [--profiles 30]

Starts a moto STS and the daemon (as the tests do), warms /creds/prod, then measures
sequential latency over one keep-alive connection, the same with a grant for prod instead
of the master token (interleaved rounds in the same run: the target is within 10 %), the
cost of a new connection (GET /healthz looks up nobody, GET /creds looks up the caller's uid
and process once per connection), a concurrent burst, the daemon's
resident memory, and that memory again after requests for many profile names that do
not exist (any local process can send them: the daemon must not remember them); then a
second daemon with --profiles role profiles gives the memory each additional profile in
use costs (RSS after serving all of them minus after serving one).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.daemon import CHAIN_CONFIG, AwsHome, Daemon
from tests.support.moto import MotoServer


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def unknown_names(base_url: str, token: str, count: int, concurrency: int) -> None:
    """``count`` requests, each for a different profile name that does not exist."""
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"Authorization": token}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, headers=headers) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with semaphore:
                assert (await client.get(f"/creds/no-such-profile-{i:08d}")).status_code == 404

        await asyncio.gather(*(one(i) for i in range(count)))


async def burst(url: str, token: str, total: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers={"Authorization": token}) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                (await client.get(url)).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return total / (time.perf_counter() - start)


def sequential(client: httpx.Client, url: str, count: int, headers: dict[str, str]) -> list[float]:
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        client.get(url, headers=headers).raise_for_status()
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def grant_against_master(daemon: Daemon, url: str, requests: int, rounds: int = 10) -> tuple[float, float]:
    """Median warm latency (ms) with the master token and with a grant, interleaved in
    ``rounds`` so that machine noise hits both alike."""
    made = httpx.post(
        f"{daemon.base_url}/grants",
        json={"profiles": ["prod"], "ttl_seconds": None, "name": "bench"},
        headers={"Authorization": daemon.token},
    )
    made.raise_for_status()
    grant = made.json()["grant"]
    master: list[float] = []
    granted: list[float] = []
    with httpx.Client() as client:
        sequential(client, url, 50, {"Authorization": grant})  # warm-up
        for _ in range(rounds):
            master += sequential(client, url, requests // rounds, {"Authorization": daemon.token})
            granted += sequential(client, url, requests // rounds, {"Authorization": grant})
    return statistics.median(master), statistics.median(granted)


def new_connections(daemon: Daemon, count: int) -> tuple[float, float]:
    """Median ms of GET /healthz and of warm GET /creds/prod, each on a new connection
    (http.client: connecting costs the client next to nothing)."""
    results = []
    for path in ("/healthz", "/creds/prod"):
        timings = []
        for _ in range(count):
            start = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            connection.request("GET", path, headers={"Authorization": daemon.token})
            reply = connection.getresponse()
            reply.read()
            connection.close()
            assert reply.status == 200, reply.status
            timings.append((time.perf_counter() - start) * 1000)
        results.append(statistics.median(timings))
    return results[0], results[1]


def rss_per_profile(moto: MotoServer, profiles: int) -> tuple[float, float, float]:
    """RSS (MiB) after serving 1 and after serving ``profiles`` role profiles, and the cost of
    each additional one."""
    config = CHAIN_CONFIG + "".join(
        f"\n[profile p{i}]\nrole_arn = arn:aws:iam::111111111111:role/p{i}\nsource_profile = base\n"
        "region = us-east-1\n"
        for i in range(profiles)
    )
    with tempfile.TemporaryDirectory() as tmp:
        home = AwsHome(Path(tmp))
        home.write(config)
        daemon = Daemon(home, sts_url=moto.url)
        try:
            with httpx.Client(headers={"Authorization": daemon.token}, timeout=30) as client:
                client.get(daemon.creds_url("p0")).raise_for_status()
                one = rss_mib(daemon.process.pid)
                for i in range(1, profiles):
                    client.get(daemon.creds_url(f"p{i}")).raise_for_status()
                all_of_them = rss_mib(daemon.process.pid)
        finally:
            daemon.stop()
            daemon.process.cleanup()
    return one, all_of_them, (all_of_them - one) / (profiles - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--profiles", type=int, default=30)
    parser.add_argument("--unknown-names", type=int, default=20000)
    args = parser.parse_args()

    moto = MotoServer()
    try:
        warm_path(moto, args)
        one, every, each = rss_per_profile(moto, args.profiles)
        print(
            f"RSS per additional profile: {each:.2f} MiB ({one:.1f} MiB serving 1 profile, "
            f"{every:.1f} MiB serving {args.profiles})"
        )
    finally:
        moto.stop()


def warm_path(moto: MotoServer, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = AwsHome(Path(tmp))
        home.write()
        daemon = Daemon(home, sts_url=moto.url)
        try:
            url = daemon.creds_url("prod")
            idle_rss = rss_mib(daemon.process.pid)
            with httpx.Client(headers={"Authorization": daemon.token}) as client:
                cold_start = time.perf_counter()
                client.get(url).raise_for_status()
                cold_ms = (time.perf_counter() - cold_start) * 1000
                timings = []
                for _ in range(args.requests):
                    start = time.perf_counter()
                    client.get(url).raise_for_status()
                    timings.append((time.perf_counter() - start) * 1000)
            rate = asyncio.run(burst(url, daemon.token, args.requests, args.concurrency))
            print(f"cold GET /creds/prod (2-hop chain on moto): {cold_ms:.1f} ms")
            median = statistics.median(timings)
            print(
                f"warm GET /creds/prod, {args.requests} sequential: median {median:.2f} ms, "
                f"p90 {percentile(timings, 0.9):.2f} ms, p99 {percentile(timings, 0.99):.2f} ms, "
                f"max {max(timings):.2f} ms"
            )
            print(f"warm GET /creds/prod, {args.concurrency} concurrent: {rate:.0f} requests/s")
            master, granted = grant_against_master(daemon, url, args.requests)
            print(
                f"warm GET /creds/prod, {args.requests} sequential each, interleaved: median "
                f"{master:.3f} ms with the master token, {granted:.3f} ms with a grant "
                f"({(granted / master - 1) * 100:+.1f} %; target within 10 %)"
            )
            fresh = min(300, args.requests)
            healthz_ms, creds_ms = new_connections(daemon, fresh)
            print(
                f"new connection per request ({fresh} each): GET /healthz {healthz_ms:.2f} ms (no "
                f"lookup), warm GET /creds/prod {creds_ms:.2f} ms (caller uid and process looked up)"
            )
            after_rss = rss_mib(daemon.process.pid)
            print(f"daemon RSS: {idle_rss:.1f} MiB at start, {after_rss:.1f} MiB after the run")
            asyncio.run(unknown_names(daemon.base_url, daemon.token, args.unknown_names, args.concurrency))
            flooded_rss = rss_mib(daemon.process.pid)
            print(
                f"daemon RSS: {after_rss:.1f} MiB before, {flooded_rss:.1f} MiB after "
                f"{args.unknown_names} requests for unknown profile names"
            )
        finally:
            daemon.stop()
            daemon.process.cleanup()


if __name__ == "__main__":
    main()
