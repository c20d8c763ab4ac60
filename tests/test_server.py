"""The HTTP contract, end to end: the real daemon process behind a real moto STS."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from tests.conftest import StartDaemon
from tests.support.daemon import AwsHome, Daemon

EXPIRATION = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_creds_follow_the_ecs_contract(daemon: Daemon) -> None:
    response = daemon.get("/creds/prod")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId", "RoleArn"}
    assert all(isinstance(value, str) and value for value in body.values())
    assert EXPIRATION.match(body["Expiration"])
    assert body["AccountId"] == "222222222222"
    assert body["RoleArn"] == "arn:aws:iam::222222222222:role/prod"
    assert "Code" not in body


def test_bare_creds_serve_the_daemons_default_profile(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(env={"AWS_PROFILE": "dev"})
    body = daemon.get("/creds").json()
    assert body["RoleArn"] == "arn:aws:iam::111111111111:role/dev"


def test_role_less_profile_gets_a_session_never_the_long_term_keys(daemon: Daemon) -> None:
    body = daemon.get("/creds/base").json()
    assert body["AccessKeyId"] != "AKIAROLEBROKERTEST01"
    assert body["Token"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and "\n" not in body["message"]
    assert set(body) == {"code", "message"}
    return body  # type: ignore[no-any-return]


def test_missing_token_is_401_and_wrong_token_is_403(daemon: Daemon) -> None:
    assert_error(daemon.get("/creds/prod", token=None), 401, "MissingToken")
    assert_error(daemon.get("/creds/prod", token="x" * 43), 403, "InvalidToken")
    assert_error(daemon.get("/creds/prod", token="Bearer " + daemon.token), 403, "InvalidToken")
    assert_error(daemon.get("/status", token=None), 401, "MissingToken")


def test_healthz_needs_no_token_and_says_nothing_else(daemon: Daemon) -> None:
    response = daemon.get("/healthz", token=None)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_profile_is_404_with_the_next_step(daemon: Daemon) -> None:
    body = assert_error(daemon.get("/creds/nope"), 404, "ProfileNotFound")
    assert "nope" in body["message"] and "prod" in body["message"]


def test_unknown_path_and_method_are_json(daemon: Daemon) -> None:
    assert_error(daemon.get("/nothing"), 404, "NotFound")
    response = httpx.post(daemon.creds_url("prod"), headers={"Authorization": daemon.token})
    assert_error(response, 405, "MethodNotAllowed")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST:80"])
def test_loopback_host_headers_are_accepted(daemon: Daemon, host: str) -> None:
    assert daemon.get("/creds/dev", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:9911", "127.0.0.1.nip.io", "169.254.170.2", ""]
)
def test_other_host_headers_are_refused(daemon: Daemon, host: str) -> None:
    """A DNS-rebinding page sends its own Host name: 403 before the token is even looked at."""
    assert_error(daemon.get("/creds/dev", headers={"Host": host}), 403, "ForbiddenHost")
    assert_error(daemon.get("/healthz", token=None, headers={"Host": host}), 403, "ForbiddenHost")


def test_no_cors_headers(daemon: Daemon) -> None:
    response = daemon.get("/creds/dev", headers={"Origin": "https://evil.example"})
    assert not any(h.lower().startswith("access-control-") for h in response.headers)


def test_status_lists_profiles_without_secrets(daemon: Daemon) -> None:
    daemon.get("/creds/prod-admin")
    response = daemon.get("/status")
    assert response.status_code == 200
    status = response.json()
    rows = {row["name"]: row for row in status["profiles"]}
    assert set(rows) == {"default", "base", "dev", "prod", "prod-admin"}
    assert rows["prod-admin"]["state"] == "fresh"
    assert (rows["prod-admin"]["requests"], rows["prod"]["requests"]) == (1, 0)
    assert rows["prod-admin"]["sts_calls"] == 3
    assert EXPIRATION.match(rows["prod-admin"]["expires_at"])
    assert rows["prod-admin"]["last_refresh"]
    assert rows["dev"]["cached"] is True  # a hop of prod-admin's chain
    assert status["sts_calls_total"] == 3
    assert not daemon.leaked(response.text)


def test_profile_errors_are_4xx_and_logged(start_daemon: StartDaemon, aws_home: AwsHome) -> None:
    config = aws_home.config_path.read_text() + (
        "\n[profile loop-a]\nrole_arn = arn:aws:iam::111111111111:role/a\nsource_profile = loop-b\n"
        "\n[profile loop-b]\nrole_arn = arn:aws:iam::111111111111:role/b\nsource_profile = loop-a\n"
        "\n[profile orphan]\nrole_arn = arn:aws:iam::111111111111:role/o\nsource_profile = missing\n"
        "\n[profile nosource]\nrole_arn = arn:aws:iam::111111111111:role/n\n"
        "\n[profile badduration]\nrole_arn = arn:aws:iam::111111111111:role/d\nsource_profile = base\n"
        "duration_seconds = soon\n"
    )
    aws_home.config_path.write_text(config)
    daemon = start_daemon()
    body = assert_error(daemon.get("/creds/loop-a"), 400, "SourceProfileLoop")
    assert "loop-a -> loop-b -> loop-a" in body["message"]
    assert_error(daemon.get("/creds/orphan"), 400, "SourceProfileNotFound")
    assert_error(daemon.get("/creds/nosource"), 400, "SourceProfileMissing")
    assert_error(daemon.get("/creds/badduration"), 400, "InvalidProfile")
    assert_error(daemon.get("/creds/default"), 400, "NoSourceCredentials")
    assert daemon.get("/creds/dev").status_code == 200  # the daemon is fine


def test_sts_access_denied_is_403(start_daemon: StartDaemon, sts) -> None:  # type: ignore[no-untyped-def]
    sts.set(mode="deny")
    daemon = start_daemon()
    body = assert_error(daemon.get("/creds/dev"), 403, "AccessDenied")
    assert "trust policy" in body["message"]
    time.sleep(0.3)
    assert "code=AccessDenied" in daemon.output()


def test_broken_config_file_answers_400_and_recovers_when_fixed(
    start_daemon: StartDaemon, aws_home: AwsHome
) -> None:
    good = aws_home.config_path.read_text()
    aws_home.config_path.write_text("[profile broken\nrole_arn = x\n")
    daemon = start_daemon()
    assert_error(daemon.get("/creds/dev"), 400, "ConfigFileError")
    aws_home.config_path.write_text(good)
    assert daemon.get("/creds/dev").status_code == 200


def test_new_profile_is_found_without_a_restart(daemon: Daemon, aws_home: AwsHome) -> None:
    with aws_home.config_path.open("a") as handle:
        handle.write(
            "\n[profile added]\nrole_arn = arn:aws:iam::444444444444:role/new\nsource_profile = base\n"
        )
    assert daemon.get("/creds/added").json()["AccountId"] == "444444444444"


def test_token_file_is_0600_without_newline_and_reused(start_daemon: StartDaemon, aws_home: AwsHome) -> None:
    first = start_daemon()
    token = first.token
    mode = aws_home.token_file.stat().st_mode & 0o777
    assert mode == 0o600
    assert not aws_home.token_file.read_bytes().endswith(b"\n")
    first.stop()
    second = start_daemon()
    assert second.token == token
    assert second.get("/creds/dev").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.0.1"])
def test_daemon_refuses_non_loopback_addresses(aws_home: AwsHome, host: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rolebroker", "serve", "--host", host, "--port", "0"],
        env=aws_home.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "not a loopback address" in result.stderr


def served_date(response: httpx.Response) -> float:
    return parsedate_to_datetime(response.headers["date"]).timestamp()


def test_warm_answers_keep_the_contract_headers_and_a_fresh_date(daemon: Daemon) -> None:
    cold = daemon.get("/creds/prod")  # fetched: answered through FastAPI
    warm = daemon.get("/creds/prod")  # cached: answered by the Guard's fast path
    assert warm.json() == cold.json()
    assert (
        set(warm.headers) == set(cold.headers) == {"date", "content-type", "content-length", "cache-control"}
    )
    for response in (cold, warm):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert int(response.headers["content-length"]) == len(response.content)
        assert abs(served_date(response) - time.time()) < 2
    # No timer keeps the Date header fresh any more: it must still move on while idle.
    time.sleep(2.1)
    for later in (daemon.get("/creds/prod"), daemon.get("/healthz", token=None), daemon.get("/nope")):
        assert served_date(later) >= served_date(warm) + 2
        assert abs(served_date(later) - time.time()) < 2


def test_warm_credentials_pass_every_check_of_the_guard_first(daemon: Daemon) -> None:
    assert daemon.get("/creds/prod").status_code == 200  # warm from now on
    assert_error(daemon.get("/creds/prod", token=None), 401, "MissingToken")
    assert_error(daemon.get("/creds/prod", token="x" * 43), 403, "InvalidToken")
    assert_error(daemon.get("/creds/prod", headers={"Host": "evil.example"}), 403, "ForbiddenHost")
    response = httpx.post(daemon.creds_url("prod"), headers={"Authorization": daemon.token})
    assert_error(response, 405, "MethodNotAllowed")
    assert_error(daemon.get("/creds/prod/extra"), 404, "NotFound")
