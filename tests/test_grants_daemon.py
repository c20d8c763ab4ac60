"""End to end: grants, caller identity and the audit log on the real daemon (moto behind
it), with real clients: boto3 and the JS SDK v3 on a grant from ``rolebroker env``, a child
of ``rolebroker exec``, another uid through setpriv, restarts and a real short TTL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartDaemon
from tests.support.cli import cli_env, rolebroker_on_path, run_cli
from tests.support.clients import CLIENTS, describe, run_client
from tests.support.daemon import Daemon
from tests.support.moto import MotoServer
from tests.support.waiting import wait_until

DEV_ARN = "arn:aws:sts::111111111111:assumed-role/dev/"
OTHER_UID = 4242

# A child that asks the endpoint in its environment for a profile and prints what it got.
ASK = """\
import json, os, sys, urllib.error, urllib.request
url = os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
token = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
if len(sys.argv) > 1:
    url = url.rsplit("/", 1)[0] + "/" + sys.argv[1]
request = urllib.request.Request(url, headers={"Authorization": token} if token else {})
try:
    with urllib.request.urlopen(request, timeout=10) as reply:
        status, body = reply.status, json.load(reply)
except urllib.error.HTTPError as exc:
    status, body = exc.code, json.load(exc)
print(json.dumps({"pid": os.getpid(), "status": status, "code": body.get("code")}))
"""


def exported(output: str, name: str) -> str:
    found = re.search(rf"^export {name}='([^']*)'$", output, flags=re.MULTILINE)
    assert found, output
    return found.group(1)


def audit_records(daemon: Daemon) -> list[dict[str, Any]]:
    path = daemon.state_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_audit(daemon: Daemon, match: Any) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [r for r in audit_records(daemon) if match(r)]
        return bool(found)

    wait_until(seen, 10, "the audit line", step=0.05)
    return found[-1]


def make_grant(
    daemon: Daemon, *profiles: str, ttl: float | None = None, name: str | None = None
) -> dict[str, Any]:
    response = daemon.post("/grants", {"profiles": list(profiles), "ttl_seconds": ttl, "name": name})
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.mark.parametrize("name", ["boto3", "js-v3"])
def test_clients_on_a_grant_from_env(name: str, daemon: Daemon, moto: MotoServer) -> None:
    env = cli_env(daemon)
    result = run_cli("env", "dev", "--shell", "bash", env=env)
    assert result.returncode == 0, result.stderr
    grant = exported(result.stdout, "AWS_CONTAINER_AUTHORIZATION_TOKEN")
    daemon.served_secrets.add(grant)
    assert grant.startswith("rbg1.") and grant != daemon.token
    assert daemon.token not in result.stdout + result.stderr
    # a second shell gets the same untimed grant: shells do not pile up grants
    again = run_cli("env", "dev", "--shell", "bash", env=env)
    assert exported(again.stdout, "AWS_CONTAINER_AUTHORIZATION_TOKEN") == grant

    run = run_client(CLIENTS[name], daemon, "dev", moto.url, env={"AWS_CONTAINER_AUTHORIZATION_TOKEN": grant})
    daemon.get("/creds/dev")  # what the client was served, for the leak checks
    assert run.returncode == 0, describe(run, daemon)
    assert run.identity()["Arn"].startswith(DEV_ARN), describe(run, daemon)
    assert grant not in run.stdout + run.stderr

    prod = run_client(
        CLIENTS[name], daemon, "prod", moto.url, env={"AWS_CONTAINER_AUTHORIZATION_TOKEN": grant}
    )
    assert prod.returncode != 0, describe(prod, daemon)
    refused = daemon.get("/creds/prod", token=grant)
    assert refused.status_code == 403 and refused.json()["code"] == "GrantScope"
    assert (daemon.get("/status", token=grant)).json()["code"] == "MasterTokenRequired"
    listing = run_cli("grants", "--json", env=env)
    assert listing.returncode == 0 and grant not in listing.stdout
    assert [g["profiles"] for g in json.loads(listing.stdout)["grants"]] == [["dev"]]


def test_exec_child_gets_its_profile_only_and_is_audited(daemon: Daemon, tmp_path: Path) -> None:
    env = rolebroker_on_path(tmp_path / "bin", cli_env(daemon))
    result = run_cli("exec", "dev", "--", sys.executable, "-c", ASK, "prod", env=env)
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout)
    assert (child["status"], child["code"]) == (403, "GrantScope")

    served = run_cli("exec", "dev", "--", sys.executable, "-c", ASK, env=env)
    child = json.loads(served.stdout)
    assert child["status"] == 200, served.stdout + served.stderr
    # exec replaces itself with the child: the CLI's own check of the profile (master token)
    # and the child's request (its grant) come from the same pid; the child's is the one
    # with a grant, whatever order the two lines were written in.
    record = wait_for_audit(
        daemon, lambda r: r.get("pid") == child["pid"] and r["outcome"] == "OK" and "grant" in r
    )
    assert record["exe"] == os.path.realpath(sys.executable)
    assert record["profile"] == "dev" and record["grant"].startswith("exec-dev-")
    assert record["uid"] == os.getuid() and "-c" in record["cmdline"]
    refused = next(r for r in audit_records(daemon) if r["outcome"] == "GrantScope")
    assert refused["profile"] == "prod" and refused["exe"] == os.path.realpath(sys.executable)
    grants = {g["name"]: g for g in daemon.get("/grants").json()["grants"]}
    assert all(g["expires_at"] is not None for g in grants.values())  # exec grants expire (12 h)
    status = daemon.get("/status").json()
    row = next(p for p in status["profiles"] if p["name"] == "dev")
    assert row["last_caller"]["pid"] == child["pid"] and row["last_caller"]["grant"].startswith("exec-dev-")
    assert status["caller_identity"] in ("netlink", "proc")
    assert status["audit_file"].endswith("audit.jsonl") and status["grants_file"].endswith("grants.json")


def test_revocation_and_a_real_short_ttl(daemon: Daemon) -> None:
    env = cli_env(daemon)
    made = run_cli("grant", "dev", "--name", "short", "--ttl", "2s", env=env)
    assert made.returncode == 0, made.stderr
    short = made.stdout.strip()
    daemon.served_secrets.add(short)
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" in made.stderr and short not in made.stderr
    kept = make_grant(daemon, "dev", name="kept")["grant"]
    assert daemon.get("/creds/dev", token=short).status_code == 200
    assert daemon.get("/creds/dev", token=kept).status_code == 200

    revoked = run_cli("grant", "--revoke", "kept", env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert daemon.get("/creds/dev", token=kept).json()["code"] == "GrantRevoked"  # at once, warm or not
    wait_until(
        lambda: daemon.get("/creds/dev", token=short).status_code == 403,
        6,
        "the 2 s grant to expire",
        step=0.2,
    )
    assert daemon.get("/creds/dev", token=short).json()["code"] == "GrantExpired"

    third = make_grant(daemon, "prod", name="third")["grant"]
    everything = run_cli("grant", "--revoke-all", env=env)
    assert everything.returncode == 0 and "third" in everything.stderr, everything.stderr
    assert daemon.get("/creds/prod", token=third).json()["code"] == "GrantRevoked"
    table = run_cli("grants", env=env)
    assert table.returncode == 0, table.stderr
    assert [line.split()[:2] for line in table.stdout.splitlines()[1:]] == [
        ["short", "revoked"],
        ["kept", "revoked"],
        ["third", "revoked"],
    ]
    for secret in (short, kept, third, daemon.token):
        assert secret not in table.stdout + table.stderr + everything.stdout
    unknown = run_cli("grant", "--revoke", "nope", env=env)
    assert unknown.returncode != 0 and "GrantNotFound" in unknown.stderr


def test_grants_survive_restart_and_reload(start_daemon: StartDaemon) -> None:
    first = start_daemon()
    grant = make_grant(first, "dev", name="lasting")["grant"]
    assert first.get("/creds/dev", token=grant).status_code == 200
    assert first.post("/reload", {}).status_code == 200
    assert first.get("/creds/dev", token=grant).status_code == 200
    first.stop()
    second = start_daemon()
    assert second.get("/creds/dev", token=grant).status_code == 200
    rows = second.get("/grants").json()["grants"]
    assert [r["name"] for r in rows] == ["lasting"] and rows[0]["last_used"] is not None


def _as_other_user(daemon: Daemon, path: str, token: str | None) -> dict[str, Any]:
    if shutil.which("setpriv") is None or os.getuid() != 0:
        pytest.skip("needs root and setpriv to connect as another uid")
    headers = f"Authorization: {token}\n" if token else ""
    result = subprocess.run(
        ["setpriv", "--reuid", str(OTHER_UID), "--regid", str(OTHER_UID), "--clear-groups",
         "curl", "-s", "-H", "@-", daemon.base_url + path],
        input=headers, capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_another_uid_is_refused_even_with_the_master_token(daemon: Daemon) -> None:
    for path in ("/creds/dev", "/status"):
        body = _as_other_user(daemon, path, daemon.token)
        assert body["code"] == "ForeignUser", body
    assert _as_other_user(daemon, "/healthz", None) == {"status": "ok"}
    record = wait_for_audit(daemon, lambda r: r["outcome"] == "ForeignUser")
    assert record["uid"] == OTHER_UID and record["profile"] == "dev"


def test_requests_without_a_token(start_daemon: StartDaemon) -> None:
    off = start_daemon()
    assert off.get("/creds/dev", token=None).status_code == 401
    off.stop()
    on = start_daemon(env={"ROLEBROKER_SAME_USER_WITHOUT_TOKEN": "true"})
    assert on.get("/creds/dev", token=None).status_code == 200
    assert on.get("/status", token=None).status_code == 401
    assert _as_other_user(on, "/creds/dev", None)["code"] == "ForeignUser"
