"""Containers end to end, in private network namespaces (tests/support/bridgenet.py): the
real daemon runs in the "host" namespace with the project's set-up applied there, moto on
that namespace's loopback, and its container listener on 169.254.170.2; real boto3 and JS
SDK v3 processes in the "container" namespaces get their grant's role through
http://169.254.170.2 (the DNAT to the container port), and nothing else.

One rig for the module (a daemon and moto take seconds to start); each test makes its own
grants through the real CLI (``rolebroker docker-env``, which calls POST /grants)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rolebroker import containerinfo
from rolebroker.cli import containers_setup as containers
from tests.support.bridgenet import (
    CONTAINER1,
    CONTAINER2,
    REPO,
    BridgeNet,
    Namespace,
    _die_with_parent,
    bridgenet,
    fetch,
    namespace_problem,
    start_moto,
)
from tests.support.ci import skip_or_fail
from tests.support.clients import CLIENTS_DIR, require_node, require_node_package
from tests.support.daemon import BASE_SECRET, CHAIN_CONFIG, CHAIN_CREDENTIALS, AwsHome
from tests.support.fakedocker import ENV_SECRET, FakeDocker, container
from tests.support.procs import ManagedProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.xdist_group("container-e2e")  # one namespace rig, on one worker

ADDRESS = containers.ADDRESS
CONTAINER_PORT = 9912
DAEMON_PORT = 9911
MOTO_PORT = 5000
"""Ports inside the private "host" namespace: nothing else listens there."""

BOTO3_CREDS = """\
import json, os, sys, boto3
try:
    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise RuntimeError("no credentials found")
    frozen = credentials.get_frozen_credentials()
    out = {"AccessKeyId": frozen.access_key, "method": credentials.method}
    out["Arn"] = session.client("sts").get_caller_identity()["Arn"]
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(out))
"""


@dataclass
class Rig:
    net: BridgeNet
    home: AwsHome
    daemon: ManagedProcess
    moto: ManagedProcess
    grants: list[str]
    docker: FakeDocker | None = None
    """The Docker API the daemon asks (DOCKER_HOST): it lists a container at CONTAINER1."""

    @property
    def token(self) -> str:
        return self.home.token_file.read_text()

    def env(self) -> dict[str, str]:
        env = {**self.home.env(f"http://127.0.0.1:{MOTO_PORT}"), "ROLEBROKER_PORT": str(DAEMON_PORT)}
        if self.docker is not None:  # only the fake engine: never a socket of this machine
            env["DOCKER_HOST"] = f"unix://{self.docker.path}"
            env["CONTAINER_HOST"] = f"unix://{self.docker.path.with_name('no-podman.sock')}"
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rolebroker ARGS`` in the host namespace, as the user would run it."""
        return subprocess.run(
            self.net.host.argv(sys.executable, "-m", "rolebroker", *args),
            env={**self.env(), "PYTHONPATH": str(REPO / "src")},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def grant(self, profile: str, *flags: str) -> dict[str, str]:
        """A grant through ``rolebroker docker-env --env-file``: the variables it printed."""
        done = self.cli("docker-env", profile, "--env-file", *flags)
        assert done.returncode == 0, done.stderr
        variables = dict(line.split("=", 1) for line in done.stdout.splitlines() if line)
        secret = (
            variables.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
            or variables.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "").rsplit("/", 1)[-1]
        )
        self.grants.append(secret)
        return variables

    def loopback(self, *requests: dict[str, Any]) -> list[dict[str, Any]]:
        return self.net.fetch(self.net.host, *requests)

    def run_in(
        self, ns: Namespace, argv: list[str], env: Mapping[str, str], cwd: Path = REPO
    ) -> dict[str, Any]:
        """A client process in ``ns`` with only ``env`` (plus PATH and a region)."""
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home.root / "container-home"),
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **env,
        }
        done = subprocess.run(
            ns.argv(*argv), env=full, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def boto3(self, ns: Namespace, gateway: str, env: Mapping[str, str]) -> dict[str, Any]:
        sts = {"AWS_ENDPOINT_URL_STS": f"http://{gateway}:{MOTO_PORT}"}
        return self.run_in(ns, [sys.executable, "-c", BOTO3_CREDS], {**env, **sts})

    def secrets(self) -> list[str]:
        return [s for s in (self.token, BASE_SECRET, ENV_SECRET, *self.grants) if s]


def _start_rig(net: BridgeNet, home: AwsHome, docker: FakeDocker) -> Rig:
    net.apply(containers.setup_plan(CONTAINER_PORT, link_kind=net.link_kind, persist=False))
    moto = start_moto(net.host, MOTO_PORT)
    rig = Rig(net, home, None, moto, [], docker)  # type: ignore[arg-type]
    argv = [sys.executable, "-m", "rolebroker", "serve", "--port", str(DAEMON_PORT)]
    rig.daemon = ManagedProcess(net.host.argv(*argv), rig.env(), cwd=home.root)

    def ready() -> bool:
        if not rig.daemon.running():
            raise RuntimeError(f"daemon exited:\n{rig.daemon.output()[-2000:]}")
        return "container listener on" in rig.daemon.output() and "listening on" in rig.daemon.output()

    wait_until(ready, 20, "the daemon's container listener", step=0.05)
    return rig


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if (problem := namespace_problem()) is not None:
        skip_or_fail(problem)
    home = AwsHome(tmp_path_factory.mktemp("container-e2e") / "home")
    home.write(CHAIN_CONFIG, CHAIN_CREDENTIALS)
    listed = container("audited-web", "amazon/aws-cli:2", "c0ffee123456", {"br-rbtest": {"ipv4": CONTAINER1}})
    with bridgenet() as net, FakeDocker(home.root / "docker.sock", [listed]).running() as docker:
        built: Rig | None = None
        try:
            built = _start_rig(net, home, docker)
            yield built
        finally:
            if built is not None:
                code = built.daemon.stop()
                output = built.daemon.output()
                leaked = [f"{s[:4]}...({len(s)} chars)" for s in built.secrets() if s in output]
                built.moto.cleanup()
                built.daemon.cleanup()
                assert not leaked, f"secrets in the daemon's output: {leaked}"
                # SIGTERM stops both servers (the container listener first), never a SIGKILL.
                assert code == -signal.SIGTERM and "rolebroker stopping" in output, (code, output[-1000:])


def creds_url(profile: str) -> str:
    return f"http://{ADDRESS}/creds/{profile}"


def loopback_key(rig: Rig, profile: str) -> str:
    """What the loopback endpoint (master token) serves for ``profile``: the path that must
    stay as it was."""
    [reply] = rig.loopback(
        {"url": f"http://127.0.0.1:{DAEMON_PORT}/creds/{profile}", "headers": {"Authorization": rig.token}}
    )
    assert reply["status"] == 200, reply
    key: str = reply["body"]["AccessKeyId"]
    return key


# --------------------------------------------------------------------------- tests


def test_boto3_and_js_v3_in_a_container_get_the_granted_role(rig: Rig) -> None:
    variables = rig.grant("dev")
    assert variables["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == creds_url("dev")
    boto = rig.boto3(rig.net.container1, "172.30.1.1", variables)
    assert boto.get("method") == "container-role", boto
    assert boto["Arn"].startswith("arn:aws:sts::111111111111:assumed-role/dev/"), boto
    require_node()
    require_node_package("@aws-sdk/client-sts")  # brings @aws-sdk/credential-provider-node
    js = rig.run_in(rig.net.container1, ["node", "container-creds-v3.mjs"], variables, cwd=CLIENTS_DIR)
    # The same cached credentials the loopback endpoint serves with the master token.
    assert js.get("AccessKeyId") == boto["AccessKeyId"] == loopback_key(rig, "dev"), (js, boto)


def test_boto3_with_the_relative_uri_alone(rig: Rig) -> None:
    variables = rig.grant("dev", "--relative")
    assert set(variables) >= {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"}
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" not in variables
    boto = rig.boto3(rig.net.container1, "172.30.1.1", variables)
    assert boto.get("method") == "container-role" and "/dev/" in boto.get("Arn", ""), boto


def test_a_second_container_gets_only_its_own_profile(rig: Rig) -> None:
    first, second = rig.grant("dev"), rig.grant("prod")
    token1 = first["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    token2 = second["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    boto = rig.boto3(rig.net.container2, "172.30.2.1", second)
    assert "/prod/" in boto.get("Arn", ""), boto
    own, other, default = rig.net.fetch(
        rig.net.container2,
        {"url": creds_url("prod"), "headers": {"Authorization": token2}},
        {"url": creds_url("dev"), "headers": {"Authorization": token2}},
        {"url": f"http://{ADDRESS}/creds", "headers": {"Authorization": token2}},
    )
    assert own["status"] == 200 and other["status"] == 403, (own, other)
    assert other["body"]["code"] == "GrantScope"
    assert default["status"] == 200 and default["body"]["AccessKeyId"] == own["body"]["AccessKeyId"]
    # Container 1's grant works from container 2 too: the grant, not the address, authorises.
    [borrowed] = rig.net.fetch(
        rig.net.container2, {"url": creds_url("dev"), "headers": {"Authorization": token1}}
    )
    assert borrowed["status"] == 200


def test_the_master_token_and_admin_routes_are_refused_on_the_container_listener(rig: Rig) -> None:
    token = rig.token
    grant = rig.grant("dev")["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    master, *admin = rig.net.fetch(
        rig.net.container1,
        {"url": creds_url("dev"), "headers": {"Authorization": token}},
        {"url": f"http://{ADDRESS}/status", "headers": {"Authorization": token}},
        {"url": f"http://{ADDRESS}/status", "headers": {"Authorization": grant}},
        {"url": f"http://{ADDRESS}/reload", "method": "POST", "headers": {"Authorization": token}},
        {
            "url": f"http://{ADDRESS}/grants",
            "method": "POST",
            "headers": {"Authorization": token},
            "body": {},
        },
        {
            "url": f"http://{ADDRESS}/mfa/dev",
            "method": "POST",
            "headers": {"Authorization": token},
            "body": {},
        },
        {"url": f"http://{ADDRESS}/proof?nonce={'0' * 64}"},
        {"url": f"http://{ADDRESS}/healthz"},
    )
    assert master["status"] == 403 and master["body"]["code"] == "MasterTokenOnContainerListener", master
    assert [(r["status"], r["body"]["code"]) for r in admin] == [(404, "NotFound")] * len(admin), admin
    # The loopback port is not reachable from a container at all: the daemon listens on
    # the namespace's loopback, which the container cannot route to.
    [direct] = rig.net.fetch(
        rig.net.container1, {"url": f"http://172.30.1.1:{DAEMON_PORT}/status"}, timeout=1.0
    )
    assert "error" in direct, direct


def test_a_lan_neighbour_is_refused(rig: Rig) -> None:
    grant = rig.grant("dev")["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    via_80, direct = rig.net.fetch(
        rig.net.lan,
        {"url": creds_url("dev"), "headers": {"Authorization": grant}},
        {"url": f"http://{ADDRESS}:{CONTAINER_PORT}/creds/dev", "headers": {"Authorization": grant}},
        timeout=1.0,
    )
    assert "error" in via_80, via_80
    assert "error" in direct, direct


def test_revocation_takes_effect_at_once(rig: Rig) -> None:
    name = "docker:revoke-me"
    variables = rig.grant("dev", "--name", name)
    grant = variables["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    request = {"url": creds_url("dev"), "headers": {"Authorization": grant}}
    revoke = {
        "url": f"http://127.0.0.1:{DAEMON_PORT}/grants/revoke",
        "method": "POST",
        "headers": {"Authorization": rig.token},
        "body": {"name": name},
    }
    [before] = rig.net.fetch(rig.net.container1, request)
    assert before["status"] == 200, before  # warm now: the fast path must check too
    [revoked] = rig.loopback(revoke)
    assert revoked["status"] == 200 and revoked["body"]["revoked"] == [name], revoked
    [after] = rig.net.fetch(rig.net.container1, request)
    assert after["status"] == 403 and after["body"]["code"] == "GrantRevoked", after


def test_the_loopback_path_is_unchanged_and_audit_names_the_container(rig: Rig) -> None:
    assert loopback_key(rig, "dev").startswith("ASIA")
    [wrong_host] = rig.loopback(
        {
            "url": f"http://127.0.0.1:{DAEMON_PORT}/creds/dev",
            "headers": {"Authorization": rig.token, "Host": ADDRESS},
        }
    )
    assert wrong_host["status"] == 403 and wrong_host["body"]["code"] == "ForbiddenHost"
    # A host process on the container address arrives from 169.254.170.2 (link-local, like a
    # host-network container): allowed, but only with a grant, like any container.
    [host_master] = rig.loopback({"url": creds_url("dev"), "headers": {"Authorization": rig.token}})
    assert host_master["body"]["code"] == "MasterTokenOnContainerListener", host_master
    # A process of this machine that binds a loopback source still reaches the listener
    # socket; the listener refuses it (loopback clients use 127.0.0.1).
    grant_for_loopback = rig.grant("dev")["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    [from_loopback] = rig.loopback(
        {
            "url": f"http://{ADDRESS}:{CONTAINER_PORT}/creds/dev",
            "headers": {"Authorization": grant_for_loopback, "Host": ADDRESS},
            "source": "127.0.0.1",
        }
    )
    assert from_loopback.get("status") == 403, from_loopback
    assert from_loopback["body"]["code"] == "ForbiddenSource"
    grant = rig.grant("dev", "--name", "docker:audited")["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    rig.net.fetch(rig.net.container1, {"url": creds_url("dev"), "headers": {"Authorization": grant}})
    audit = rig.home.root / "state" / "rolebroker" / "audit.jsonl"

    def audited() -> list[dict[str, Any]]:
        lines = audit.read_text().splitlines() if audit.exists() else []
        return [r for r in map(json.loads, lines) if r.get("grant") == "docker:audited"]

    wait_until(audited, 5, "the audit line of the container request")
    assert audited()[0]["source"] == CONTAINER1 and audited()[0]["outcome"] == "OK"
    # The daemon asked the (fake) Docker API which container holds that address.
    assert audited()[0]["container"] == {
        "name": "audited-web",
        "image": "amazon/aws-cli:2",
        "id": "c0ffee123456",
        "engine": "docker",
    }
    shown = rig.cli("audit", "--grant", "docker:audited")
    assert shown.returncode == 0 and "container audited-web at 172.30.1.2" in shown.stdout, shown
    # Container 2's address is in no listing: recorded as no container, not as another one.
    # The daemon lists containers at most once per MIN_INTERVAL; a request within that time of
    # the last listing has none made after it, so its line would leave the container out.
    time.sleep(containerinfo.MIN_INTERVAL)
    other = rig.grant("dev", "--name", "docker:unlisted")["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    rig.net.fetch(rig.net.container2, {"url": creds_url("dev"), "headers": {"Authorization": other}})

    def unlisted() -> list[dict[str, Any]]:
        return [
            r for r in map(json.loads, audit.read_text().splitlines()) if r.get("grant") == "docker:unlisted"
        ]

    wait_until(unlisted, 5, "the audit line of the unlisted container's request")
    assert unlisted()[0]["source"] == CONTAINER2 and unlisted()[0]["container"] is None
    assert not any(secret in audit.read_text() for secret in rig.secrets())


def test_nothing_is_left_behind() -> None:
    """The module's rig is gone once its tests ran: no stray holder or daemon (each test
    module builds its own namespaces; this one checks the helper's own clean-up)."""
    if (problem := namespace_problem()) is not None:
        skip_or_fail(problem)
    ns_before = os.readlink("/proc/self/ns/net")
    with bridgenet() as net:
        pids = [ns.pid for ns in (net.host, net.container1, net.container2, net.lan)]
        holder = subprocess.Popen(
            net.host.argv("sleep", "30"), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        net.processes.append(holder)  # type: ignore[arg-type]
    assert os.readlink("/proc/self/ns/net") == ns_before
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert holder.poll() is not None


def test_without_the_address_the_daemon_says_so_and_serves_loopback(tmp_path: Path) -> None:
    """``auto`` leaves the listener off with one line naming the set-up; ``on`` binds it with
    IP_FREEBIND, so it answers as soon as the set-up adds the address, without a restart."""
    if (problem := namespace_problem()) is not None:
        skip_or_fail(problem)
    home = AwsHome(tmp_path / "home")
    home.write(CHAIN_CONFIG, CHAIN_CREDENTIALS)
    ns = Namespace.create("solo")
    daemons: list[ManagedProcess] = []
    try:
        argv = [sys.executable, "-m", "rolebroker", "serve", "--port", str(DAEMON_PORT)]
        for mode in ("auto", "on"):
            env = {**home.env(), "ROLEBROKER_CONTAINERS": mode}
            daemon = ManagedProcess(ns.argv(*argv), env, cwd=home.root)
            daemons.append(daemon)
            wait_until(lambda d=daemon: "listening on" in d.output() or not d.running(), 20, "the daemon")
            [health] = fetch(ns, {"url": f"http://127.0.0.1:{DAEMON_PORT}/healthz"})
            assert health["status"] == 200, daemon.output()
            lines = [
                line for line in daemon.output().splitlines() if "rolebroker containers setup --apply" in line
            ]
            assert len(lines) == 1, daemon.output()
            if mode == "auto":
                assert "container listener off" in lines[0]
                daemon.stop()
        plan = containers.setup_plan(CONTAINER_PORT, link_kind="bridge", persist=False)
        containers.apply(plan, ns.runner())
        token = home.token_file.read_text()
        [late] = fetch(ns, {"url": creds_url("dev"), "headers": {"Authorization": token}})
        assert late["status"] == 403 and late["body"]["code"] == "MasterTokenOnContainerListener", late
    finally:
        for daemon in daemons:
            daemon.cleanup()
        ns.close()
