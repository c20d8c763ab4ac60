"""``rolebroker doctor`` in a shell whose token is a grant: it asks the daemon what the token
is (GET /grants/self) instead of comparing it with the token file, and says which profiles
the grant covers, until when, and when it no longer works; and whether the daemon can tell who calls."""

from __future__ import annotations

import subprocess

import httpx

from tests.support.cli import cli_env, invoke_cli
from tests.support.daemon import Daemon


def _grant(daemon: Daemon, profiles: list[str], name: str, ttl: int | None = 3600) -> str:
    created = httpx.post(
        f"{daemon.base_url}/grants",
        json={"profiles": profiles, "ttl_seconds": ttl, "name": name},
        headers={"Authorization": daemon.token},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    grant: str = created.json()["grant"]
    return grant


def _doctor(daemon: Daemon, profile: str, token: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(
        daemon,
        AWS_CONTAINER_CREDENTIALS_FULL_URI=daemon.creds_url(profile),
        AWS_CONTAINER_AUTHORIZATION_TOKEN=token,
    )
    done = invoke_cli("doctor", env=env)
    assert token not in done.stdout + done.stderr and not daemon.leaked(done.stdout + done.stderr)
    return done


def test_a_grant_is_named_with_its_profiles_and_expiry(daemon: Daemon) -> None:
    done = _doctor(daemon, "prod", _grant(daemon, ["prod", "dev"], "deploy"))
    assert (
        "AWS_CONTAINER_AUTHORIZATION_TOKEN holds grant 'deploy' for prod, dev; it expires at" in done.stdout
    )
    assert "(in 59 min)" in done.stdout or "(in 1h00m)" in done.stdout
    assert "not the daemon's" not in done.stdout
    assert done.returncode == 0, done.stdout


def test_a_grant_that_does_not_cover_the_profile_is_a_problem(daemon: Daemon) -> None:
    done = _doctor(daemon, "prod", _grant(daemon, ["dev"], "devonly", ttl=None))
    assert "holds grant 'devonly' for dev; it never expires" in done.stdout
    assert "grant 'devonly' does not cover profile 'prod'" in done.stdout and "GrantScope" in done.stdout
    assert done.returncode == 1


def test_a_revoked_grant_and_a_foreign_token_are_problems(daemon: Daemon) -> None:
    grant = _grant(daemon, ["prod"], "gone")
    revoked = httpx.post(
        f"{daemon.base_url}/grants/revoke",
        json={"name": "gone"},
        headers={"Authorization": daemon.token},
        timeout=10,
    )
    assert revoked.status_code == 200
    done = _doctor(daemon, "prod", grant)
    assert "the grant in AWS_CONTAINER_AUTHORIZATION_TOKEN has been revoked" in done.stdout
    assert 'eval "$(rolebroker env prod' in done.stdout and done.returncode == 1
    other = _doctor(daemon, "prod", "x" * 43)
    assert "is not the daemon's, nor a grant it knows" in other.stdout and "(InvalidToken)" in other.stdout


def test_caller_identity_availability_is_reported() -> None:
    from rolebroker.cli import doctor
    from rolebroker.cli.client import DaemonClient
    from rolebroker.cli.shellenv import read_aws_config
    from rolebroker.config import Settings
    from rolebroker.statusdoc import StatusDoc

    settings = Settings()
    ctx = doctor._Context(settings, {}, None, DaemonClient(settings), read_aws_config({}))
    doctor._check_caller_identity(ctx, StatusDoc(caller_identity="unavailable", audit_file="/a.jsonl"))
    doctor._check_caller_identity(ctx, StatusDoc(caller_identity="netlink"))
    doctor._check_caller_identity(ctx, StatusDoc())  # an older daemon says nothing: nor does the doctor
    unavailable, known = ctx.findings
    assert unavailable.level is doctor.Level.NOTE and "the ForeignUser check is skipped" in unavailable.why
    assert "macOS: not yet supported" in unavailable.fix
    assert known.level is doctor.Level.OK and "(netlink)" in known.what
