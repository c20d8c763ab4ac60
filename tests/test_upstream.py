"""An upstream that misbehaves, end to end: the real daemon, real moto behind the fault
proxy (hanging, slow, throttling, echoing, malformed, expired answers), credential_process
roots that hang or hand out expired keys, and a real botocore container fetcher."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import StartDaemon
from tests.support.daemon import CHAIN_CONFIG, AwsHome, Daemon
from tests.support.stsproxy import StsProxy

# A botocore container fetcher, as every boto3 client uses it (2 s timeout), re-fetching
# the way botocore does inside its refresh window. Prints outcomes, never a secret.
REFETCH_SCRIPT = """\
import json, sys, time
from botocore.utils import ContainerMetadataFetcher
url, token, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
fetcher = ContainerMetadataFetcher()
results, end = [], time.monotonic() + duration
while time.monotonic() < end:
    began = time.monotonic()
    try:
        creds = fetcher.retrieve_full_uri(url, headers={"Authorization": token})
        results.append({"ok": True, "key": creds["AccessKeyId"], "took": time.monotonic() - began})
    except Exception as exc:
        results.append({"ok": False, "error": type(exc).__name__, "took": time.monotonic() - began})
    time.sleep(0.3)
print(json.dumps(results))
"""


def codes(response: httpx.Response) -> str:
    """What a failure message may show of an answer: never a served secret."""
    return f"{response.status_code} {response.json().get('code', 'credentials')}"


def status_of(daemon: Daemon) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in daemon.get("/status").json()["profiles"]}


def test_a_hanging_sts_never_costs_a_client_its_credentials(start_daemon: StartDaemon, sts: StsProxy) -> None:
    """900 s sessions renewed 895 s before expiry: due 5 s after issue, servable for ~11 min.
    STS then hangs: the refresh hangs with it, and every re-fetch is answered from memory."""
    sts.set(expires_in=900)
    daemon = start_daemon("--refresh-before", "895")
    first = daemon.get("/creds/prod")
    assert first.status_code == 200
    sts.set(mode="hang")
    client = subprocess.Popen(
        [sys.executable, "-c", REFETCH_SCRIPT, daemon.creds_url("prod"), daemon.token, "9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 8
        while sts.count("AssumeRole") < 3 and time.monotonic() < deadline:  # the refresh is hanging
            time.sleep(0.1)
        assert sts.count("AssumeRole") >= 3, "no refresh reached the hanging STS"
        time.sleep(2.5)
        assert status_of(daemon)["prod"]["state"] == "refreshing"
        sts.release()
        out, err = client.communicate(timeout=30)
    finally:
        sts.release()
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, daemon.leaked(err) or err[-2000:]
    assert not daemon.leaked(out + err)
    results = json.loads(out)
    assert len(results) >= 15
    assert [r for r in results if not r["ok"]] == []
    assert max(r["took"] for r in results) < 1.0, max(r["took"] for r in results)
    deadline = time.monotonic() + 10
    while status_of(daemon)["prod"]["state"] != "fresh" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.get("/creds/prod").json()["AccessKeyId"] != first.json()["AccessKeyId"]


def test_an_sts_answer_slower_than_the_request_timeout_is_cached(
    start_daemon: StartDaemon, sts: StsProxy
) -> None:
    sts.set(delay=6)  # longer than the request's wait (1 s) and than botocore's old 5 s read timeout
    daemon = start_daemon(env={"ROLEBROKER_REQUEST_TIMEOUT": "1"})
    cold = daemon.get("/creds/dev")
    assert cold.status_code == 504 and cold.json()["code"] == "StsTimeout"
    deadline = time.monotonic() + 12
    while (response := daemon.get("/creds/dev")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    assert sts.count("AssumeRole") == 1  # the first call was not killed and retried


HANG_SCRIPT = """\
import sys, time
from pathlib import Path
release = Path(sys.argv[1])
for _ in range(600):  # bounded: 60 s at most
    if release.exists():
        break
    time.sleep(0.1)
sys.exit(1)
"""


def test_hanging_profiles_do_not_starve_healthy_ones(
    start_daemon: StartDaemon, aws_home: AwsHome, tmp_path: Path
) -> None:
    script, release = tmp_path / "hang.py", tmp_path / "release"
    script.write_text(HANG_SCRIPT)
    hanging = [f"hang{i}" for i in range(40)]
    healthy = [f"healthy{i}" for i in range(10)]
    config = CHAIN_CONFIG + "".join(
        f"\n[profile {name}]\ncredential_process = {sys.executable} {script} {release}\n" for name in hanging
    )
    config += "".join(
        f"\n[profile {name}]\nrole_arn = arn:aws:iam::111111111111:role/{name}\nsource_profile = base\n"
        f"region = us-east-1\n"
        for name in healthy
    )
    aws_home.write(config)
    try:
        daemon = start_daemon(env={"ROLEBROKER_REQUEST_TIMEOUT": "1"})
        assert daemon.get("/creds/base").status_code == 200  # the healthy profiles' shared root

        async def fetch_all(names: list[str]) -> list[httpx.Response]:
            async with httpx.AsyncClient(headers={"Authorization": daemon.token}, timeout=15) as client:
                return await asyncio.gather(*(client.get(daemon.creds_url(n)) for n in names))

        stuck = asyncio.run(fetch_all(hanging))
        assert {r.status_code for r in stuck} == {504}
        began = time.monotonic()
        served = asyncio.run(fetch_all(healthy))
        for response in served:
            daemon.remember(response)
        assert [r.status_code for r in served] == [200] * len(healthy), [codes(r) for r in served]
        assert time.monotonic() - began < 3
    finally:
        release.touch()


def test_throttled_sts_is_called_at_the_backoff_pace_and_every_attempt_is_counted(
    daemon: Daemon, sts: StsProxy
) -> None:
    sts.set(mode="throttle")
    answers = []
    end = time.monotonic() + 6
    while time.monotonic() < end:  # a client retrying every 100 ms
        answers.append(daemon.get("/creds/dev"))
        time.sleep(0.1)
    assert {r.status_code for r in answers} == {503}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers)
    assert {r.json()["code"] for r in answers} == {"StsUnavailable"}
    # backoff ~1, 2, 4 s: at most 4 fetches of 2 HTTP attempts in 6 s (not one fetch a second)
    assert 2 <= sts.count("AssumeRole") <= 8, sts.count("AssumeRole")
    assert daemon.get("/status").json()["sts_calls_total"] == sts.count()


def test_an_error_that_echoes_the_request_leaks_no_secret(daemon: Daemon, sts: StsProxy) -> None:
    dev = daemon.get("/creds/dev").json()  # prod's AssumeRole is signed with these
    sts.set(mode="echo")
    response = daemon.get("/creds/prod")
    assert response.status_code == 403, codes(response)
    message = response.json()["message"]
    assert "<redacted>" in message and len(message) < 600
    for secret in (dev["Token"], dev["SecretAccessKey"], dev["AccessKeyId"]):
        assert secret not in response.text
        assert secret[:40] not in response.text
    status = daemon.get("/status").text
    assert dev["Token"][:40] not in status and dev["AccessKeyId"] not in status
    assert not daemon.leaked(response.text + status)
    daemon.stop()
    assert dev["Token"][:40] not in daemon.output()
    assert dev["AccessKeyId"] not in daemon.output()


def test_unreadable_sts_answers_get_their_own_code_and_a_log_line(daemon: Daemon, sts: StsProxy) -> None:
    for mode, profile in (("malformed", "dev"), ("empty", "base")):
        sts.set(mode=mode)
        response = daemon.get(f"/creds/{profile}")
        assert response.status_code == 502, codes(response)
        assert response.json()["code"] == "StsBadResponse"
        assert sts.url in response.json()["message"]
    assert daemon.output().count("bad STS answer from") >= 2


def test_expired_credentials_from_sts_are_never_served(daemon: Daemon, sts: StsProxy) -> None:
    sts.set(expires_in=-60)
    answers = []
    for _ in range(10):
        answers.append(daemon.get("/creds/dev"))
        time.sleep(0.1)
    for response in answers:
        daemon.remember(response)
    assert {r.status_code for r in answers} == {502}, [codes(r) for r in answers]
    assert {r.json()["code"] for r in answers} == {"UpstreamCredentialsExpired"}
    assert sts.count("AssumeRole") <= 2  # retried with backoff, not once a second
    sts.set(expires_in=None)
    time.sleep(2)
    deadline = time.monotonic() + 10
    while (response := daemon.get("/creds/dev")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 200


EXPIRED_PROCESS = """\
import json
print(json.dumps({"Version": 1, "AccessKeyId": "ASIAEXPIREDPROCESS01", "SecretAccessKey": "s" * 40,
                  "SessionToken": "t" * 60, "Expiration": "2020-01-01T00:00:00Z"}))
"""


def test_expired_credential_process_output_is_a_clear_error(
    start_daemon: StartDaemon, aws_home: AwsHome, tmp_path: Path
) -> None:
    script = tmp_path / "expired.py"
    script.write_text(EXPIRED_PROCESS)
    aws_home.write(CHAIN_CONFIG + f"\n[profile stale]\ncredential_process = {sys.executable} {script}\n")
    daemon = start_daemon()
    response = daemon.get("/creds/stale")
    assert response.status_code == 502, codes(response)
    assert response.json()["code"] == "UpstreamCredentialsExpired"
    assert "2020-01-01T00:00:00Z" in response.json()["message"]
    assert "code=UpstreamCredentialsExpired" in daemon.output()
    assert "s" * 40 not in daemon.output() and "t" * 60 not in daemon.output()


def test_unreachable_sts_errors_name_the_endpoint(daemon: Daemon, sts: StsProxy) -> None:
    sts.stop()
    response = daemon.get("/creds/dev")
    assert response.status_code == 503, codes(response)
    assert response.json()["code"] == "StsUnavailable"
    assert sts.url in response.json()["message"]


def test_a_config_error_is_not_retried_until_the_file_changes(
    start_daemon: StartDaemon, aws_home: AwsHome
) -> None:
    config = CHAIN_CONFIG + (
        "\n[profile nokeys]\nregion = us-east-1\n"
        "\n[profile needkeys]\nrole_arn = arn:aws:iam::111111111111:role/needkeys\nsource_profile = nokeys\n"
    )
    aws_home.write(config)
    daemon = start_daemon()
    for _ in range(4):  # over 3 s: a retry every second would show up in the log
        response = daemon.get("/creds/needkeys")
        assert response.status_code == 400 and response.json()["code"] == "NoSourceCredentials"
        time.sleep(1)
    assert daemon.output().count("failed profile=nokeys") == 1
    assert "until the AWS config changes" in daemon.output()
    with aws_home.credentials_path.open("a") as credentials:
        credentials.write(
            "\n[nokeys]\naws_access_key_id = AKIANOKEYSNOWKEYS001\naws_secret_access_key = " + "k" * 40
        )
    response = daemon.get("/creds/needkeys")  # no reload: the changed file is noticed
    assert response.status_code == 200, codes(response)
