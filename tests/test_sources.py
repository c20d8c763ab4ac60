"""Chain roots other than static keys, and broken chains: a ``credential_process`` root
(a real script run by botocore inside the real daemon) chained to a moto role, and
loops or missing source profiles answered as clear 4xx errors, never 500s."""

from __future__ import annotations

import datetime
import logging
import shlex
import sys
import time
from pathlib import Path

import pytest
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.credentials import RefreshableCredentials

from rolebroker.hops import SourceHop, source_hop
from tests.conftest import StartDaemon
from tests.support.daemon import AwsHome, Daemon
from tests.support.stsproxy import StsProxy

PROC_KEY_ID = "ASIAPROCESSTESTKEY01"
PROC_SECRET = "processTestSecretKey00000000000000000000"
PROC_TOKEN = "processTestSessionToken000000000000000000000000000000"
PROC_LONG_TERM_SECRET = "processLongTermSecret0000000000000000000"

PROCESS_SCRIPT = """\
import datetime, json, sys
with open(sys.argv[1], "a") as runs:
    runs.write("run\\n")
mode = sys.argv[2]
if mode == "fail":
    print("cannot reach the vault", file=sys.stderr)
    sys.exit(1)
body = {"Version": 1, "AccessKeyId": sys.argv[3], "SecretAccessKey": sys.argv[4]}
if mode == "temporary":
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    body["SessionToken"] = sys.argv[5]
    body["Expiration"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps(body))
"""


@pytest.fixture
def process_home(aws_home: AwsHome, tmp_path: Path) -> AwsHome:
    script = tmp_path / "vault.py"
    script.write_text(PROCESS_SCRIPT)
    runs = tmp_path / "runs"

    def command(*args: str) -> str:
        return shlex.join([sys.executable, str(script), str(runs), *args])

    aws_home.write(
        f"""\
[default]
region = us-east-1

[profile proc]
credential_process = {command("temporary", PROC_KEY_ID, PROC_SECRET, PROC_TOKEN)}
region = us-east-1

[profile proc-role]
role_arn = arn:aws:iam::777777777777:role/deploy
source_profile = proc
region = us-east-1

[profile proc-keys]
credential_process = {command("long-term", "AKIAPROCESSLONGTERM1", PROC_LONG_TERM_SECRET)}
region = us-east-1

[profile proc-broken]
credential_process = {command("fail")}
region = us-east-1

[profile proc-broken-role]
role_arn = arn:aws:iam::777777777777:role/deploy
source_profile = proc-broken
region = us-east-1

[profile proc-mfa-role]
role_arn = arn:aws:iam::777777777777:role/deploy
source_profile = proc
mfa_serial = arn:aws:iam::777777777777:mfa/alice
region = us-east-1
""",
        "",
    )
    return aws_home


@pytest.fixture
def process_daemon(process_home: AwsHome, start_daemon: StartDaemon) -> Daemon:
    daemon = start_daemon()
    daemon.served_secrets.update({PROC_SECRET, PROC_TOKEN, PROC_LONG_TERM_SECRET})
    return daemon


def runs_of(daemon: Daemon) -> int:
    runs = daemon.home.root.parent / "runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_credential_process_root_chained_to_a_role(process_daemon: Daemon, sts: StsProxy) -> None:
    role = process_daemon.get("/creds/proc-role")
    assert role.status_code == 200, role.text
    assert role.json()["AccountId"] == "777777777777"
    assert [c.params["RoleArn"] for c in sts.calls("AssumeRole")] == ["arn:aws:iam::777777777777:role/deploy"]
    assert runs_of(process_daemon) == 1

    # The process profile itself: its temporary credentials pass through, from the cache.
    direct = process_daemon.get("/creds/proc")
    assert direct.status_code == 200
    assert (direct.json()["AccessKeyId"], direct.json()["Token"]) == (PROC_KEY_ID, PROC_TOKEN)
    assert runs_of(process_daemon) == 1
    assert process_daemon.get("/creds/proc-role").json() == role.json()
    assert sts.count() == 1


def test_credential_process_with_long_term_keys_is_served_as_a_session(
    process_daemon: Daemon, sts: StsProxy
) -> None:
    response = process_daemon.get("/creds/proc-keys")
    assert response.status_code == 200, response.text
    assert response.json()["SecretAccessKey"] != PROC_LONG_TERM_SECRET
    assert sts.count("GetSessionToken") == 1


def test_failing_credential_process_is_a_clear_4xx(process_daemon: Daemon, sts: StsProxy) -> None:
    for profile in ("proc-broken", "proc-broken-role"):
        began = time.monotonic()
        response = process_daemon.get(f"/creds/{profile}")
        assert time.monotonic() - began < 3.0
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["code"] == "CredentialSourceFailed"
        assert "proc-broken" in body["message"]
        assert "run it by hand" in body["message"]
    assert sts.count() == 0
    assert process_daemon.get("/healthz").status_code == 200


def test_mfa_on_a_chain_without_long_term_keys_is_a_profile_error(
    process_daemon: Daemon, sts: StsProxy
) -> None:
    response = process_daemon.get("/creds/proc-mfa-role")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "MfaNeedsLongTermKeys"
    assert "aws_access_key_id" in response.json()["message"]
    assert sts.count() == 0


BROKEN_CHAINS = """\
[default]
region = us-east-1

[profile loop-a]
role_arn = arn:aws:iam::111111111111:role/a
source_profile = loop-b

[profile loop-b]
role_arn = arn:aws:iam::111111111111:role/b
source_profile = loop-a

[profile orphan]
role_arn = arn:aws:iam::111111111111:role/orphan
source_profile = ghost

[profile sourceless]
role_arn = arn:aws:iam::111111111111:role/sourceless

[profile on-orphan]
role_arn = arn:aws:iam::111111111111:role/child
source_profile = orphan

[profile metadata]
role_arn = arn:aws:iam::111111111111:role/ec2
credential_source = Ec2InstanceMetadata

[profile nothing]
region = us-east-1
"""


BROKEN = [
    ("loop-a", 400, "SourceProfileLoop", "loop-a -> loop-b -> loop-a"),
    ("loop-b", 400, "SourceProfileLoop", "loop-b -> loop-a -> loop-b"),
    ("orphan", 400, "SourceProfileNotFound", "source_profile = ghost"),
    ("on-orphan", 400, "SourceProfileNotFound", "source_profile = ghost"),
    ("sourceless", 400, "SourceProfileMissing", "add source_profile"),
    ("metadata", 400, "UnsupportedCredentialSource", "use source_profile"),
    ("nothing", 400, "NoSourceCredentials", "aws_access_key_id"),
    ("ghost", 404, "ProfileNotFound", "known:"),
]


def test_broken_chains_are_clear_client_errors(
    aws_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy
) -> None:
    aws_home.write(BROKEN_CHAINS, "")
    daemon = start_daemon()
    for profile, status, code, hint in BROKEN:
        response = daemon.get(f"/creds/{profile}")
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"code", "message"}
        assert body["code"] == code, body
        assert hint in body["message"], body
        assert "\n" not in body["message"]
    assert sts.count() == 0
    assert daemon.get("/healthz").status_code == 200
    rows = {row["name"]: row for row in daemon.get("/status").json()["profiles"]}
    for profile, status, code, _hint in BROKEN:
        if status == 400:
            assert rows[profile]["state"] == "error", rows[profile]
            assert rows[profile]["last_error"]["code"] == code


# -- the expiry of a root, read from botocore ------------------------------------------------


def use_aws_home(home: AwsHome, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    for name, value in {**home.env(), **extra}.items():
        monkeypatch.setenv(name, value)


def test_botocore_gives_the_expiry_of_a_credential_process_root(
    process_home: AwsHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pins botocore's private _expiry_time: if it moves, the root gets the 15-minute
    # fallback lifetime instead of the process's Expiration, and this fails.
    use_aws_home(process_home, monkeypatch)
    began = time.time()
    credentials = SourceHop(profile="proc", fingerprint="pin").fetch(None)
    assert credentials.expiration is not None
    # The script prints now + 1 h, truncated to whole seconds.
    assert began + 3600 - 2 <= credentials.expiration <= time.time() + 3600
    assert SourceHop(profile="proc-keys", fingerprint="pin").fetch(None).expiration is None


def test_unreadable_botocore_expiry_counts_as_expiring_soon(caplog: pytest.LogCaptureFixture) -> None:
    expires = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    resolved = RefreshableCredentials.create_from_metadata(
        {"access_key": "a", "secret_key": "b", "token": "c", "expiry_time": expires.isoformat()},
        refresh_using=lambda: {},
        method="test",
    )
    assert source_hop._expiry_of(resolved, now=1000.0) == expires.timestamp()
    assert source_hop._expiry_of(BotocoreCredentials("a", "b"), now=1000.0) is None  # static keys

    del resolved._expiry_time  # what a botocore that renamed it looks like
    source_hop._warn_unknown_expiry.cache_clear()
    with caplog.at_level(logging.WARNING, logger="rolebroker"):
        for now in (1000.0, 2000.0):
            expiry = source_hop._expiry_of(resolved, now=now)
            assert expiry == now + source_hop.UNKNOWN_EXPIRY_LIFETIME  # renewed early, never kept for ever
    assert [r.getMessage().startswith("cannot read the expiry") for r in caplog.records] == [True]
    source_hop._warn_unknown_expiry.cache_clear()
