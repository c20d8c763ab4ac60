"""In process: the container listener's app (container_server.py) over httpx.ASGITransport,
with a fake broker and a real GrantStore and AuditLog. Each defence of the listener is
shown refusing what it exists to refuse; the namespace tier (test_container_e2e.py) shows
the same with real sockets and real SDKs."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from click.testing import CliRunner

from rolebroker.audit import AuditLog
from rolebroker.authtoken import TokenStore
from rolebroker.broker import Broker
from rolebroker.cli.docker import container_env, container_name, grant_name_for, run_argv
from rolebroker.cli.main import cli
from rolebroker.container_server import ADDRESS, ContainerApp, source_allowed
from rolebroker.grants import GrantStore
from tests.support.cli import cli_env, run_cli
from tests.support.daemon import Daemon

TOKEN = "m" * 43
CONTAINER = "172.30.1.2"


class FakeCredentials:
    def __init__(self, profile: str) -> None:
        self.profile = profile

    def to_ecs_json(self) -> dict[str, str]:
        return {"AccessKeyId": f"ASIA{self.profile.upper()}", "SecretAccessKey": "s", "Token": "t"}


class FakeBroker:
    """What the container app uses of the Broker: warm bodies and credentials by profile."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.warm: dict[str, bytes] = {}

    def warm_body(self, profile: str) -> bytes | None:
        return self.warm.get(profile)

    async def credentials(self, profile: str) -> FakeCredentials:
        self.asked.append(profile)
        return FakeCredentials(profile)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.broker = FakeBroker()
        self.token = TokenStore(TOKEN, tmp_path / "token")
        self.grants = GrantStore(tmp_path / "grants.json", lambda: TOKEN)
        self.audit = AuditLog(tmp_path / "audit.jsonl", secrets=lambda: (TOKEN,))
        self.app = ContainerApp(cast(Broker, self.broker), self.token, self.grants, self.audit)

    def client(self, source: str = CONTAINER) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(source, 40000))
        return httpx.AsyncClient(transport=transport, base_url=f"http://{ADDRESS}")

    def grant(self, *profiles: str, name: str | None = None) -> str:
        return self.grants.create(profiles, None, name)[1]

    def audited(self) -> list[dict[str, Any]]:
        self.audit.close()
        return [json.loads(line) for line in self.audit.path.read_text().splitlines()]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    built = Rig(tmp_path)
    built.audit.start()
    try:
        yield built
    finally:
        built.audit.close()


async def test_a_grant_gets_its_profile_and_only_that(rig: Rig) -> None:
    grant = rig.grant("dev")
    async with rig.client() as client:
        own = await client.get("/creds/dev", headers={"Authorization": grant})
        default = await client.get("/creds", headers={"Authorization": grant})
        other = await client.get("/creds/prod", headers={"Authorization": grant})
    assert own.status_code == 200 and own.json()["AccessKeyId"] == "ASIADEV"
    assert own.headers["cache-control"] == "no-store" and "date" in own.headers
    assert default.json()["AccessKeyId"] == "ASIADEV"
    assert other.status_code == 403 and other.json()["code"] == "GrantScope"
    assert rig.broker.asked == ["dev", "dev"]


async def test_the_warm_path_keeps_every_check(rig: Rig) -> None:
    rig.broker.warm = {"dev": b'{"AccessKeyId":"WARM"}', "prod": b'{"AccessKeyId":"WARMPROD"}'}
    grant = rig.grant("dev", name="warm")
    async with rig.client() as client:
        served = await client.get("/creds/dev", headers={"Authorization": grant})
        scoped = await client.get("/creds/prod", headers={"Authorization": grant})
        rig.grants.revoke("warm")
        revoked = await client.get("/creds/dev", headers={"Authorization": grant})
    assert served.json() == {"AccessKeyId": "WARM"} and rig.broker.asked == []
    assert scoped.json()["code"] == "GrantScope"
    assert revoked.status_code == 403 and revoked.json()["code"] == "GrantRevoked"


async def test_the_relative_uri_carries_the_grant_in_the_path(rig: Rig) -> None:
    grant = rig.grant("prod", "dev")
    async with rig.client() as client:
        served = await client.get(f"/v2/credentials/{grant}")
        forged = await client.get(f"/v2/credentials/{grant[:-2]}AA")
        master = await client.get(f"/v2/credentials/{TOKEN}")
    assert served.status_code == 200 and served.json()["AccessKeyId"] == "ASIAPROD"
    assert forged.status_code == 403 and forged.json()["code"] == "InvalidToken"
    assert master.json()["code"] == "MasterTokenOnContainerListener"


async def test_the_master_token_is_refused_with_its_own_code(rig: Rig) -> None:
    async with rig.client() as client:
        master = await client.get("/creds/dev", headers={"Authorization": TOKEN})
        missing = await client.get("/creds/dev")
    assert master.status_code == 403 and master.json()["code"] == "MasterTokenOnContainerListener"
    assert "docker-env" in master.json()["message"]
    assert missing.status_code == 401 and missing.json()["code"] == "MissingToken"
    assert rig.broker.asked == []


@pytest.mark.parametrize(
    "path", ["/status", "/reload", "/mfa/dev", "/grants", "/grants/self", "/proof", "/healthz"]
)
async def test_admin_routes_do_not_exist_here(rig: Rig, path: str) -> None:
    async with rig.client() as client:
        for method in ("GET", "POST"):
            reply = await client.request(method, path, headers={"Authorization": TOKEN})
            assert reply.status_code == 404 and reply.json()["code"] == "NotFound", (method, reply.text)


async def test_only_get(rig: Rig) -> None:
    grant = rig.grant("dev")
    async with rig.client() as client:
        reply = await client.post("/creds/dev", headers={"Authorization": grant})
    assert reply.status_code == 405 and reply.json()["code"] == "MethodNotAllowed"


@pytest.mark.parametrize("host", [ADDRESS, f"{ADDRESS}:80"])
async def test_the_ecs_host_is_accepted(rig: Rig, host: str) -> None:
    grant = rig.grant("dev")
    async with rig.client() as client:
        reply = await client.get("/creds/dev", headers={"Authorization": grant, "Host": host})
    assert reply.status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "evil.example", f"{ADDRESS}:9912", "localhost"])
async def test_other_hosts_are_refused(rig: Rig, host: str) -> None:
    grant = rig.grant("dev")
    async with rig.client() as client:
        reply = await client.get("/creds/dev", headers={"Authorization": grant, "Host": host})
    assert reply.status_code == 403 and reply.json()["code"] == "ForbiddenHost"


@pytest.mark.parametrize("source", ["127.0.0.1", "127.8.9.10", "::1", "100.64.0.1", "::ffff:127.0.0.1"])
async def test_loopback_and_public_sources_are_refused(rig: Rig, source: str) -> None:
    grant = rig.grant("dev")
    async with rig.client(source) as client:
        reply = await client.get("/creds/dev", headers={"Authorization": grant})
    assert reply.status_code == 403 and reply.json()["code"] == "ForbiddenSource"
    assert rig.broker.asked == []


def test_source_allowed() -> None:
    for ok in ("172.17.0.2", "10.88.0.5", "192.168.1.20", ADDRESS, "fd00::2"):
        assert source_allowed(ok), ok
    for bad in ("127.0.0.1", "::1", "0.0.0.0", "100.64.0.1", "", None, "not-an-ip"):
        assert not source_allowed(bad), bad


async def test_audit_lines_carry_the_source_and_no_secret(rig: Rig) -> None:
    grant = rig.grant("dev", name="docker:web")
    async with rig.client() as client:
        await client.get("/creds/dev", headers={"Authorization": grant, "User-Agent": f"x {grant}"})
        await client.get("/creds/prod", headers={"Authorization": grant})
        await client.get("/creds/dev", headers={"Authorization": TOKEN})
    records = rig.audited()
    assert [(r["profile"], r["outcome"], r.get("grant"), r["source"]) for r in records] == [
        ("dev", "OK", "docker:web", CONTAINER),
        ("prod", "GrantScope", "docker:web", CONTAINER),
        ("dev", "MasterTokenOnContainerListener", None, CONTAINER),
    ]
    text = rig.audit.path.read_text()
    assert grant not in text and TOKEN not in text


# -- the CLI's side, without a daemon ----------------------------------------------------------


def test_container_env_full_and_relative() -> None:
    full = container_env("prod", "rbg1.x.y", "g", None, relative=False, region="eu-west-1")
    assert full.as_env_file() == (
        f"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{ADDRESS}/creds/prod\n"
        "AWS_CONTAINER_AUTHORIZATION_TOKEN=rbg1.x.y\nAWS_REGION=eu-west-1\nAWS_DEFAULT_REGION=eu-west-1\n"
    )
    relative = container_env("prod", "rbg1.x.y", "g", None, relative=True, region=None)
    assert relative.as_flags() == "--env AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/rbg1.x.y"


def test_docker_run_never_puts_the_grant_on_the_command_line() -> None:
    env = container_env("prod", "rbg1.secret.mac", "g", None, relative=False, region=None)
    argv = run_argv("docker", "rb-prod-1", env, ["--rm", "alpine", "env"], named=False)
    assert argv == [
        "docker",
        "run",
        "--env",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "--env",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "--name",
        "rb-prod-1",
        "--rm",
        "alpine",
        "env",
    ]
    assert not any("rbg1" in part for part in argv)


def test_grant_names_follow_the_container() -> None:
    assert container_name(["--rm", "--name", "web", "img"]) == "web"
    assert container_name(["--name=api", "img"]) == "api"
    assert container_name(["img", "--", "--name", "x"]) is None
    assert grant_name_for("Web App/1") == "docker:web-app-1"


# -- the commands against the real daemon (loopback; a fake docker on PATH) ---------------------

FAKE_DOCKER = """#!/bin/sh
# Prints what `docker run` was given: its arguments, and the container variables it inherits.
printf '%s\\n' "$@" > "$0.args"
env | grep '^AWS_CONTAINER_' > "$0.env"
exit 7
"""


def test_docker_run_execs_docker_with_a_grant_named_after_the_container(
    daemon: Daemon, tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "podman"
    fake.parent.mkdir()
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    env = cli_env(daemon, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    done = run_cli("docker", "run", "dev", "--podman", "--ttl", "1h", "--", "--name", "web", "img", env=env)
    assert done.returncode == 7, done.stderr  # docker's own exit status: rolebroker exec'd it
    assert "grant docker:web for dev" in done.stderr
    args = Path(f"{fake}.args").read_text().splitlines()
    assert args == [
        "run",
        "--env",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "--env",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "--env",
        "AWS_REGION",
        "--env",
        "AWS_DEFAULT_REGION",
        "--name",
        "web",
        "img",
    ]
    inherited = dict(line.split("=", 1) for line in Path(f"{fake}.env").read_text().splitlines())
    assert inherited["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"http://{ADDRESS}/creds/dev"
    grant = inherited["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    assert grant.startswith("rbg1.") and grant != daemon.token
    # The grant is the daemon's: it opens dev (here on loopback) and nothing else.
    assert daemon.get("/creds/dev", token=grant).status_code == 200
    assert daemon.get("/creds/prod", token=grant).json()["code"] == "GrantScope"
    listed = daemon.get("/grants").json()["grants"]
    assert [(g["name"], g["profiles"]) for g in listed] == [("docker:web", ["dev"])]
    assert listed[0]["expires_at"] is not None


def test_docker_env_refuses_an_unknown_profile_and_a_bad_ttl(daemon: Daemon) -> None:
    env = cli_env(daemon)
    unknown = run_cli("docker-env", "nope", env=env)
    assert unknown.returncode == 1 and "ProfileNotFound" in unknown.stderr
    bad = run_cli("docker-env", "dev", "--ttl", "soon", env=env)
    assert bad.returncode == 2 and "--ttl" in bad.stderr
    assert daemon.get("/grants").json()["grants"] == []


def test_containers_and_doctor_containers_are_registered() -> None:
    runner = CliRunner()
    plan = runner.invoke(cli, ["containers", "setup", "--port", "10123"])
    assert plan.exit_code == 0 and f"dnat ip to {ADDRESS}:10123" in plan.output
    assert "--containers" in runner.invoke(cli, ["doctor", "--help"]).output
