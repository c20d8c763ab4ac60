"""IAM Identity Center (SSO) profiles as chain roots, through botocore's own SSO support:
the real daemon, a token cache written the way ``aws sso login`` writes it, a fake SSO
portal on loopback (``AWS_ENDPOINT_URL_SSO``) and moto STS for the roles chained from it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import StartDaemon
from tests.support.daemon import AwsHome, Daemon
from tests.support.fakesso import (
    ACCESS_TOKEN,
    ROLE_KEY_ID,
    ROLE_SECRET,
    ROLE_SESSION_TOKEN,
    FakeSsoPortal,
    write_sso_token,
)
from tests.support.stsproxy import StsProxy

CORP_START_URL = "https://corp.awsapps.com/start"
LEGACY_START_URL = "https://legacy.awsapps.com/start"

SSO_CONFIG = f"""\
[default]
region = us-east-1

[sso-session corp]
sso_start_url = {CORP_START_URL}
sso_region = us-east-1
sso_registration_scopes = sso:account:access

[profile sso-dev]
sso_session = corp
sso_account_id = 444444444444
sso_role_name = Developer
region = us-east-1

[profile sso-admin]
role_arn = arn:aws:iam::555555555555:role/admin
source_profile = sso-dev
region = us-east-1

[profile legacy]
sso_start_url = {LEGACY_START_URL}
sso_region = us-east-1
sso_account_id = 666666666666
sso_role_name = ReadOnly
region = us-east-1
"""


@pytest.fixture
def portal() -> Iterator[FakeSsoPortal]:
    server = FakeSsoPortal()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sso_daemon(aws_home: AwsHome, start_daemon: StartDaemon, portal: FakeSsoPortal) -> Daemon:
    aws_home.write(SSO_CONFIG, "")
    daemon = start_daemon(env={"AWS_ENDPOINT_URL_SSO": portal.url})
    daemon.served_secrets.update({ACCESS_TOKEN, ROLE_SECRET, ROLE_SESSION_TOKEN})
    return daemon


def test_missing_sso_login_fails_fast_with_the_login_command(
    sso_daemon: Daemon, portal: FakeSsoPortal, sts: StsProxy
) -> None:
    expected = {
        "sso-dev": "run: aws sso login --sso-session corp",
        "sso-admin": "run: aws sso login --sso-session corp",  # the role's root needs the login
        "legacy": "run: aws sso login --profile legacy",
    }
    for profile, hint in expected.items():
        for _ in range(2):  # an SDK's retry is as fast
            began = time.monotonic()
            response = sso_daemon.get(f"/creds/{profile}")
            assert time.monotonic() - began < 1.0
            assert response.status_code == 403, response.text
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["code"] == "SsoLoginRequired"
            assert body["message"].endswith(hint)
    assert portal.calls == []
    assert sts.count() == 0
    rows = {row["name"]: row for row in sso_daemon.get("/status").json()["profiles"]}
    assert rows["sso-admin"]["state"] == "error"
    assert rows["sso-admin"]["last_error"]["code"] == "SsoLoginRequired"
    assert sso_daemon.get("/healthz").status_code == 200


def test_expired_sso_token_is_a_login_error_without_any_network_call(
    sso_daemon: Daemon, portal: FakeSsoPortal, aws_home: AwsHome, sts: StsProxy
) -> None:
    write_sso_token(aws_home.root, start_url=CORP_START_URL, session_name="corp", expires_in=-60)
    write_sso_token(aws_home.root, start_url=LEGACY_START_URL, expires_in=-60)
    for profile in ("sso-dev", "legacy"):
        began = time.monotonic()
        response = sso_daemon.get(f"/creds/{profile}")
        assert time.monotonic() - began < 1.0
        assert (response.status_code, response.json()["code"]) == (403, "SsoLoginRequired")
    assert portal.calls == []

    # After `aws sso login`, the next request works: no reload, no restart.
    write_sso_token(aws_home.root, start_url=CORP_START_URL, session_name="corp")
    time.sleep(1.1)  # past the pause that shields STS from a burst of retries
    response = sso_daemon.get("/creds/sso-dev")
    assert response.status_code == 200, response.text
    assert response.json()["AccessKeyId"] == ROLE_KEY_ID


def test_sso_root_serves_its_role_credentials_and_a_role_chained_from_it(
    sso_daemon: Daemon, portal: FakeSsoPortal, aws_home: AwsHome, sts: StsProxy
) -> None:
    write_sso_token(aws_home.root, start_url=CORP_START_URL, session_name="corp")
    write_sso_token(aws_home.root, start_url=LEGACY_START_URL)

    direct = sso_daemon.get("/creds/sso-dev")
    assert direct.status_code == 200, direct.text
    body = direct.json()
    assert (body["AccessKeyId"], body["Token"]) == (ROLE_KEY_ID, ROLE_SESSION_TOKEN)
    assert sts.count() == 0  # SSO credentials are already temporary: passed through

    admin = sso_daemon.get("/creds/sso-admin")
    assert admin.status_code == 200, admin.text
    assert admin.json()["AccountId"] == "555555555555"
    assert [c.params["RoleArn"] for c in sts.calls("AssumeRole")] == ["arn:aws:iam::555555555555:role/admin"]

    assert sso_daemon.get("/creds/legacy").status_code == 200
    assert {(c.role_name, c.account_id) for c in portal.calls} == {
        ("Developer", "444444444444"),
        ("ReadOnly", "666666666666"),
    }
    assert all(c.bearer_token == ACCESS_TOKEN for c in portal.calls)
    assert len([c for c in portal.calls if c.role_name == "Developer"]) == 1  # cached per hop


def test_botocore_gives_the_expiry_of_an_sso_root(aws_home: AwsHome, portal: FakeSsoPortal) -> None:
    # Pins botocore's private _expiry_time for SSO credentials (fetched on first use): if it
    # moves, the root gets the 15-minute fallback lifetime instead of the portal's. A fresh
    # interpreter, like the daemon: botocore fixes the SSO cache directory from HOME at import.
    aws_home.write(SSO_CONFIG, "")
    write_sso_token(aws_home.root, start_url=CORP_START_URL, session_name="corp")
    script = (
        "from rolebroker.hops import SourceHop; "
        "c = SourceHop(profile='sso-dev', fingerprint='pin').fetch(None); "
        "print(c.expiration, c.session_token == " + repr(ROLE_SESSION_TOKEN) + ")"
    )
    env = {**aws_home.env(), "AWS_ENDPOINT_URL_SSO": portal.url}
    began = time.time()
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expiration, same_token = done.stdout.split()
    assert same_token == "True"
    assert began + portal.lifetime - 1 <= float(expiration) <= time.time() + portal.lifetime
