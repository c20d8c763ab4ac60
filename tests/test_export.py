"""``credential-process`` and ``export``: static credentials for tools that only read profiles
or environment keys. Formats are checked by the shells that read them; the profile route
end to end through a real boto3 process and the real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rolebroker.cli import export
from rolebroker.cli.client import DaemonClient, DaemonError, Reply
from rolebroker.cli.main import cli
from tests.support.cli import cli_env, run_cli
from tests.support.daemon import Daemon
from tests.support.moto import MotoServer

HOSTILE_SECRET = "s3cr'et\"$(touch pwned)`id`\\n;$HOME{x}\u2019"
ECS_BODY = {
    "AccessKeyId": "ASIAEXPORTTEST000001",
    "SecretAccessKey": HOSTILE_SECRET,
    "Token": "tok/en+with=chars'and\"quotes",
    "Expiration": "2030-01-02T03:04:05Z",
    "AccountId": "222222222222",
}
EXPECTED = {
    "AWS_ACCESS_KEY_ID": ECS_BODY["AccessKeyId"],
    "AWS_SECRET_ACCESS_KEY": HOSTILE_SECRET,
    "AWS_SESSION_TOKEN": ECS_BODY["Token"],
    "AWS_CREDENTIAL_EXPIRATION": ECS_BODY["Expiration"],
}
ROLEBROKER = Path(sys.executable).with_name("rolebroker")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The daemon replaced by a canned ECS reply; records the profiles asked for."""
    asked: list[str] = []

    def credentials(_self: DaemonClient, profile: str) -> Reply:
        asked.append(profile)
        return Reply(200, json.dumps(ECS_BODY))

    monkeypatch.setattr(DaemonClient, "credentials", credentials)
    monkeypatch.delenv(export.INSIDE_DAEMON, raising=False)
    return asked


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env)


def test_credential_process_prints_version_1_json(served: list[str]) -> None:
    result = invoke("credential-process", "prod")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "Version": 1,
        "AccessKeyId": ECS_BODY["AccessKeyId"],
        "SecretAccessKey": HOSTILE_SECRET,
        "SessionToken": ECS_BODY["Token"],
        "Expiration": "2030-01-02T03:04:05Z",
    }
    assert served == ["prod"]
    assert invoke("export", "prod", "--format", "process").stdout == result.stdout


def test_export_json_is_the_ecs_reply(served: list[str]) -> None:
    result = invoke("export", "prod", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == ECS_BODY


SHELL_READERS = {
    "env": ["bash", "-c", 'eval "$(cat)"; env'],
    "fish": ["fish", "-c", "cat | source; env"],
}


@pytest.mark.parametrize("fmt", ["env", "fish"])
def test_export_lines_give_the_exact_values_in_their_shell(
    served: list[str], fmt: str, tmp_path: Path
) -> None:
    result = invoke("export", "prod", "--format", fmt)
    assert result.exit_code == 0, result.output
    shell = subprocess.run(
        SHELL_READERS[fmt],
        input=result.stdout,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert shell.returncode == 0, shell.stderr
    seen = dict(line.split("=", 1) for line in shell.stdout.splitlines() if line.startswith("AWS_"))
    assert seen == EXPECTED
    assert not (tmp_path / "pwned").exists(), "a value was executed"


def test_export_powershell_quotes_single_quotes_by_doubling(served: list[str]) -> None:
    result = invoke("export", "prod", "--format", "powershell")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "$Env:AWS_ACCESS_KEY_ID = 'ASIAEXPORTTEST000001'"
    assert lines[1] == "$Env:AWS_SECRET_ACCESS_KEY = 's3cr''et\"$(touch pwned)`id`\\n;$HOME{x}\u2019\u2019'"
    assert [line.split(" = ")[0] for line in lines] == [f"$Env:{name}" for name in EXPECTED]


def test_errors_name_the_daemons_code_on_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(export.INSIDE_DAEMON, raising=False)

    def refuse(_self: DaemonClient, profile: str) -> Reply:
        raise DaemonError(404, "ProfileNotFound", f"no profile {profile!r}; known: dev, prod")

    monkeypatch.setattr(DaemonClient, "credentials", refuse)
    for args in (("credential-process", "prdo"), ("export", "prdo", "--format", "fish")):
        result = invoke(*args)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "ProfileNotFound: no profile 'prdo'; known: dev, prod" in result.stderr


def test_credential_process_refuses_to_run_under_the_daemon(served: list[str]) -> None:
    result = invoke("credential-process", "prod-rb", env={export.INSIDE_DAEMON: "4242"})
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "started by the rolebroker daemon itself (pid 4242)" in result.stderr
    assert served == [], "the daemon must not be asked"


# -- end to end ----------------------------------------------------------------------------------

IDENTITY = "import boto3, json; print(json.dumps(boto3.client('sts').get_caller_identity()))"


@pytest.mark.skipif(not ROLEBROKER.exists(), reason="needs the rolebroker script of the venv")
def test_boto3_uses_a_profile_whose_credential_process_is_rolebroker(
    daemon: Daemon, moto: MotoServer, tmp_path: Path
) -> None:
    """The client's AWS config is its own: only the profile that calls rolebroker."""
    client_config = tmp_path / "client-config"
    client_config.write_text(
        f"[profile prod-rb]\ncredential_process = {ROLEBROKER} credential-process prod\nregion = us-east-1\n"
    )
    env = {
        **cli_env(daemon),
        "AWS_CONFIG_FILE": str(client_config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_PROFILE": "prod-rb",
        "AWS_ENDPOINT_URL_STS": moto.url,
    }
    result = subprocess.run(
        [sys.executable, "-c", IDENTITY], env=env, capture_output=True, text=True, timeout=60
    )
    assert not daemon.leaked(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["Arn"].startswith("arn:aws:sts::222222222222:assumed-role/prod/")


@pytest.mark.skipif(not ROLEBROKER.exists(), reason="needs the rolebroker script of the venv")
def test_a_served_profile_whose_source_is_rolebroker_fails_at_once(daemon: Daemon) -> None:
    """Without the guard the daemon's credential_process asks the daemon for the profile it
    is fetching, joins its own single flight and both wait until the request timeout."""
    looping = (
        f"\n[profile loop]\ncredential_process = {ROLEBROKER} credential-process loop "
        f"--port {daemon.port} --token-file {daemon.home.token_file}\n"
    )
    with daemon.home.config_path.open("a") as handle:
        handle.write(looping)
    started = time.monotonic()
    reply = daemon.get("/creds/loop")
    elapsed = time.monotonic() - started
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == "CredentialSourceFailed"
    assert "started by the rolebroker daemon itself" in reply.json()["message"]
    assert elapsed < 4.0, f"took {elapsed:.1f}s: the daemon waited on itself"

    # What a tool with `credential_process = rolebroker credential-process loop` sees.
    started = time.monotonic()
    result = run_cli("credential-process", "loop", env=cli_env(daemon))
    assert result.returncode != 0
    assert result.stdout == ""
    assert "CredentialSourceFailed" in result.stderr
    assert "started by the rolebroker daemon itself" in result.stderr
    assert time.monotonic() - started < 6.0
    assert run_cli("status", env=cli_env(daemon)).returncode == 0  # still serving
