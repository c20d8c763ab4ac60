"""What real clients need beyond the happy path: a cold role chain that is slower than the
client's own timeout, and a long-lived process that outlives many sessions.

The timeouts are the clients' own (docs/clients.md): JS SDK v2 gives up a request after
1 s of silence and tries 4 times (~3.5 s in all), botocore and the CLIs after 2 s, 3 times
with 1 s pauses. The daemon's single flight must outlive each abandoned request so that
the retry joins the same STS call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from tests.conftest import StartDaemon
from tests.support.clients import CLIENT_NAMES, CLIENTS, describe, run_client
from tests.support.daemon import Daemon
from tests.support.moto import MotoServer
from tests.support.stsproxy import StsProxy

PROD_ADMIN_ARN = "arn:aws:sts::333333333333:assumed-role/admin/alice-admin"
HOPS = 3  # dev, prod, admin: each one AssumeRole

# Per STS call. JS clients: 3 x 0.8 s = 2.4 s, past two 1 s timeouts and inside JS v2's
# ~3.5 s budget. botocore-based: 3 x 1.2 s = 3.6 s, past the first 2 s attempt, so the
# second attempt (at 3 s) joins the STS call still in flight.
COLD_DELAY = {"boto3": 1.2, "cli-v1": 1.2, "cli-v2": 1.2, "js-v3": 0.8, "js-v2": 0.8}


@pytest.mark.parametrize("name", CLIENT_NAMES)
def test_cold_chain_slower_than_the_clients_timeout(
    name: str, daemon: Daemon, sts: StsProxy, moto: MotoServer
) -> None:
    sts.set(delay=COLD_DELAY[name])
    run = run_client(CLIENTS[name], daemon, "prod-admin", moto.url)
    sts.set(delay=0)
    assert daemon.get("/creds/prod-admin").status_code == 200  # learn the secrets for leak checks
    assert not daemon.leaked(run.stdout + run.stderr)
    assert run.returncode == 0, describe(run, daemon)
    assert run.identity()["Arn"] == PROD_ADMIN_ARN, describe(run, daemon)

    # Every abandoned request and its retries shared one STS call per hop.
    per_role = Counter(c.params["RoleArn"] for c in sts.calls("AssumeRole"))
    assert sorted(per_role.values()) == [1] * HOPS, per_role
    chain_seconds = HOPS * COLD_DELAY[name]
    if name == "js-v2":
        # Its first request timed out after 1 s: the answer came to a retry.
        requests = run.counter("credential-requests")
        assert requests is not None and requests >= 2, describe(run, daemon)
    elif name == "boto3":
        failed = run.counter("credential-attempts-failed")
        assert failed is not None and failed >= 1, describe(run, daemon)
    elif name == "js-v3":
        # fromHttp's 1 s requestTimeout only warns now: one request that waited.
        assert run.counter("credential-requests") == 1, describe(run, daemon)
    assert run.seconds >= chain_seconds, describe(run, daemon)
    # The abandoned requests left no trace but the normal refresh lines.
    output = daemon.output()
    assert "Traceback" not in output and " ERROR " not in output, daemon.safe_output()[-3000:]


# A boto3 process that calls STS for DURATION seconds. It records the access key id each
# call was signed with (from the Authorization header), every re-fetch botocore made from
# the container endpoint (its debug log line, with the expiry it got) and every failure.
LONG_LIVED = """\
import json, logging, sys, time
import boto3

duration, pause = float(sys.argv[1]), float(sys.argv[2])
start = time.time()
calls, fetches, failures = [], [], []

class Watch(logging.Handler):
    def emit(self, record):
        now = time.time()
        if str(record.msg).startswith("Retrieved credentials will expire at"):
            fetches.append({"t": now - start, "left": record.args[0].timestamp() - now})
        elif record.levelno >= logging.WARNING:
            failures.append({"t": now - start, "log": record.getMessage().splitlines()[0]})

watched = logging.getLogger("botocore.credentials")
watched.setLevel(logging.DEBUG)
watched.addHandler(Watch())
watched.propagate = False

signed = []
def remember_key(request, **kwargs):
    credential = request.headers["Authorization"].decode().split("Credential=", 1)[1]
    signed.append(credential.split("/", 1)[0])

sts = boto3.client("sts")
sts.meta.events.register("before-send.sts.GetCallerIdentity", remember_key)
while time.time() - start < duration:
    try:
        sts.get_caller_identity()
        calls.append({"t": time.time() - start, "key": signed[-1]})
    except Exception as exc:
        failures.append({"t": time.time() - start, "error": f"{type(exc).__name__}: {exc}"})
    time.sleep(pause)
print(json.dumps({"calls": calls, "fetches": fetches, "failures": failures}))
"""


def run_long_lived(daemon: Daemon, moto: MotoServer, duration: float) -> dict[str, Any]:
    env = {**daemon.client_env("prod-admin"), "AWS_ENDPOINT_URL_STS": moto.url}
    result = subprocess.run(
        [sys.executable, "-c", LONG_LIVED, str(duration), "0.2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    assert daemon.get("/creds/prod-admin").status_code == 200  # the latest secrets, for leak checks
    assert not daemon.leaked(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def key_changes(calls: list[dict[str, Any]]) -> list[str]:
    """The access keys in the order the client first used them."""
    keys: list[str] = []
    for call in calls:
        if not keys or keys[-1] != call["key"]:
            keys.append(call["key"])
    return keys


def test_boto3_in_the_mandatory_window_rides_through_refreshes(
    start_daemon: StartDaemon, sts: StsProxy, moto: MotoServer
) -> None:
    """12 s sessions: botocore is always inside its 10 min mandatory window, so every call
    blocks on a re-fetch from the daemon. The daemon refreshes at half life (6 s) and must
    never fail a re-fetch nor hand out credentials about to expire (botocore raises
    "refreshed credentials are still expired"); STS sees the refresh cycles only."""
    sts.set(expires_in=12)
    daemon = start_daemon("--refresh-before", "3600")
    report = run_long_lived(daemon, moto, duration=15)

    calls, fetches = report["calls"], report["fetches"]
    assert report["failures"] == [], report["failures"]
    assert len(calls) >= 35, len(calls)
    # botocore re-fetched for (at least) every call after the first.
    assert len(fetches) >= len(calls) - 1, (len(fetches), len(calls))
    # Nothing served was close to expiry: the daemon refreshes at 6 s left, serves until 3 s.
    assert min(f["left"] for f in fetches) > 2, min(f["left"] for f in fetches)
    keys = key_changes(calls)
    assert len(keys) >= 3, f"the client stayed on {len(keys)} key(s) over 15 s of 12 s sessions"
    assert len(set(keys)) == len(keys), "the client went back to credentials it had already replaced"
    # Each of ~70 re-fetches hit the warm path; STS saw one AssumeRole per hop per cycle.
    assert sts.count("AssumeRole") <= HOPS * 5, sts.count("AssumeRole")


def test_boto3_refetches_only_when_its_window_opens_and_gets_new_credentials(
    start_daemon: StartDaemon, sts: StsProxy, moto: MotoServer
) -> None:
    """The production set-up, with sessions cut to just over botocore's 15 min advisory
    window: 909 s sessions renewed 903 s before expiry, i.e. every 6 s. botocore holds its
    credentials until fewer than 900 s remain (9 s after they were issued); by then the
    daemon has renewed them (3 s earlier, 3 s before the next renewal, so neither side
    races the other), so each re-fetch returns new credentials with more than 900 s left
    and the client goes quiet again instead of re-fetching on every call. (With the
    default --refresh-before 1200 and 1 h sessions: one re-fetch per 40 minutes.)"""
    sts.set(expires_in=909)
    daemon = start_daemon("--refresh-before", "903")
    report = run_long_lived(daemon, moto, duration=20)

    calls, fetches = report["calls"], report["fetches"]
    assert report["failures"] == [], report["failures"]
    assert len(calls) >= 45, len(calls)
    # First re-fetch ~9 s in, then every ~6 s: a handful, not one per call.
    assert 2 <= len(fetches) <= 6, fetches
    assert all(f["left"] > 900 for f in fetches), fetches
    keys = key_changes(calls)
    assert len(keys) == 1 + len(fetches), (len(keys), fetches)  # every re-fetch: new credentials
    assert len(set(keys)) == len(keys)
    status = {p["name"]: p for p in daemon.get("/status").json()["profiles"]}
    assert status["prod-admin"]["state"] == "fresh" and status["prod-admin"]["last_error"] is None
