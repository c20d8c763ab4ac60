"""Chains, single flight, background refresh and STS outages, end to end: the real daemon,
a real moto STS behind the fault-injecting proxy, and real boto3 client processes."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartDaemon
from tests.support.daemon import Daemon
from tests.support.moto import MotoServer
from tests.support.stsproxy import StsProxy

IDENTITY_SCRIPT = "import boto3, json; print(json.dumps(boto3.client('sts').get_caller_identity()))"


def boto3_identity(daemon: Daemon, profile: str, moto: MotoServer) -> dict[str, str]:
    """A separate boto3 process that knows nothing but the endpoint, the token and a region."""
    env = {**daemon.client_env(profile), "AWS_ENDPOINT_URL_STS": moto.url}
    result = subprocess.run(
        [sys.executable, "-c", IDENTITY_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, daemon.leaked(result.stderr) or result.stderr[-2000:]
    assert not daemon.leaked(result.stdout + result.stderr)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_three_hop_chain_across_accounts_with_external_id(
    daemon: Daemon, sts: StsProxy, moto: MotoServer
) -> None:
    identity = boto3_identity(daemon, "prod-admin", moto)
    assert identity["Arn"] == "arn:aws:sts::333333333333:assumed-role/admin/alice-admin"
    assert identity["Account"] == "333333333333"

    calls = {c.params["RoleArn"]: c.params for c in sts.calls("AssumeRole")}
    assert list(calls) == [
        "arn:aws:iam::111111111111:role/dev",
        "arn:aws:iam::222222222222:role/prod",
        "arn:aws:iam::333333333333:role/admin",
    ]
    assert calls["arn:aws:iam::222222222222:role/prod"]["ExternalId"] == "prod-external-id"
    assert "ExternalId" not in calls["arn:aws:iam::111111111111:role/dev"]
    assert calls["arn:aws:iam::111111111111:role/dev"]["RoleSessionName"] == f"rolebroker-{getpass.getuser()}"

    # prod and dev are hops of that chain: serving them calls STS for nothing.
    assert boto3_identity(daemon, "prod", moto)["Arn"].startswith(
        "arn:aws:sts::222222222222:assumed-role/prod/"
    )
    assert daemon.get("/creds/dev").status_code == 200
    assert sts.count("AssumeRole") == 3


def test_fifty_concurrent_cold_requests_make_one_assume_role_per_hop(daemon: Daemon, sts: StsProxy) -> None:
    sts.set(delay=0.4)  # every STS call is slow, so the requests overlap for ~1.2 s

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=20) as client:
            headers = {"Authorization": daemon.token}
            return await asyncio.gather(
                *(client.get(daemon.creds_url("prod-admin"), headers=headers) for _ in range(50))
            )

    responses = asyncio.run(burst())
    for response in responses:
        daemon.remember(response)
    assert [r.status_code for r in responses] == [200] * 50
    assert len({r.json()["AccessKeyId"] for r in responses}) == 1
    assert sts.count("AssumeRole") == 3


def test_background_refresh_renews_before_expiry_without_any_request(
    start_daemon: StartDaemon, sts: StsProxy
) -> None:
    """The e2e smoke of renewal (timing: test_app.py on a fake clock): 10 s sessions refresh at 5 s."""
    sts.set(expires_in=10)  # short sessions: with --refresh-before 3600 they refresh at half life
    daemon = start_daemon("--refresh-before", "3600")
    first = daemon.get("/creds/prod").json()
    assert sts.count("AssumeRole") == 2
    deadline = time.monotonic() + 12
    while sts.count("AssumeRole") < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sts.count("AssumeRole") >= 4, "the refresher did not renew dev and prod on its own"
    second = daemon.get("/creds/prod").json()
    assert second["AccessKeyId"] != first["AccessKeyId"]
    status = {p["name"]: p for p in daemon.get("/status").json()["profiles"]}
    assert status["prod"]["state"] == "fresh"
    assert status["prod"]["expires_in_seconds"] >= 5
    assert "refreshed profile=prod role=arn:aws:iam::222222222222:role/prod" in daemon.output()


def test_served_credentials_keep_more_than_refresh_before(daemon: Daemon) -> None:
    body = daemon.get("/creds/prod").json()
    expires = time.mktime(time.strptime(body["Expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert expires - time.time() > 1200


def test_sts_outage_serves_cache_then_errors_then_recovers(start_daemon: StartDaemon, sts: StsProxy) -> None:
    """The e2e smoke of an outage (the timing edges: test_app.py on a fake clock)."""
    sts.set(expires_in=16)  # refresh due at 8 s, servable until 12 s (floor: a quarter of the life)
    daemon = start_daemon("--refresh-before", "3600")
    cached = daemon.get("/creds/prod").json()
    start = time.monotonic()
    sts.stop()  # connection refused from now on

    assert daemon.get("/creds/prod").json()["AccessKeyId"] == cached["AccessKeyId"]

    began = time.monotonic()
    response = daemon.get("/creds/prod-admin")  # its last hop is cold
    assert response.status_code in (503, 504), response.text
    assert response.json()["code"] in ("StsUnavailable", "StsTimeout")
    assert time.monotonic() - began < 8

    time.sleep(max(0.0, 9.5 - (time.monotonic() - start)))  # due, refresh failing: still served
    stale = daemon.get("/creds/prod")
    assert stale.status_code == 200
    assert stale.json()["AccessKeyId"] == cached["AccessKeyId"]
    assert "stale profile=prod" in daemon.output()

    time.sleep(max(0.0, 13.5 - (time.monotonic() - start)))  # past the floor: never served
    expired = daemon.get("/creds/prod")
    assert expired.status_code in (503, 504), expired.text

    sts.set(expires_in=None)
    sts.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        recovered = daemon.get("/creds/prod")
        if recovered.status_code == 200:
            break
        time.sleep(0.5)
    assert recovered.status_code == 200
    assert recovered.json()["AccessKeyId"] != cached["AccessKeyId"]
    assert daemon.output().count("stale profile=prod ") == 1  # warned once, not per request


def test_no_secret_in_daemon_output_even_at_debug_level(start_daemon: StartDaemon, moto: MotoServer) -> None:
    daemon = start_daemon("--log-level", "debug")
    boto3_identity(daemon, "prod-admin", moto)
    daemon.get("/creds/prod", token="wrong-token-" + "x" * 40)
    daemon.get("/status")
    daemon.stop()
    assert daemon.secrets() - {""}
    assert not daemon.leaked()
    assert os.path.exists(daemon.process.log_path)


def context_switches(pid: int) -> int:
    """Of all the process's threads: each one is a wake-up (or a preemption)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += sum(
                int(line.split()[1]) for line in status.read_text().splitlines() if "ctxt_switches" in line
            )
    return total


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_an_idle_daemon_with_a_warm_profile_sleeps(daemon: Daemon) -> None:
    """uvicorn's 0.1 s tick, a 1 s refresher tick and a 1 s MFA tick once woke it ~11 times
    a second; now it sleeps until a deadline (the next refresh is an hour away) or an event."""
    assert daemon.get("/creds/prod").status_code == 200
    time.sleep(6)  # the warm-set file is written 5 s after a use
    before = context_switches(daemon.process.pid)
    time.sleep(3)
    assert context_switches(daemon.process.pid) - before <= 3
