"""The inner side: services, deploy, inspect, remove, report."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tests.support.netns.constants import (
    BASE_ACCOUNT,
    BASE_KEY_ID,
    BASE_SECRET,
    DAEMON_PORT,
    LOOPBACK,
    MOTO_PORT,
    MOTO_URL,
    PROFILE,
    REGION,
    REPO,
    ROLE_ACCOUNT,
    ROLE_ARN,
    RUN_MARKER,
    SERVERLESS_JS,
    SERVERLESS_QUIET_ENV,
    SERVICE_DIR,
)
from tests.support.netns.dns import DnsResponder
from tests.support.netns.motochecks import account_snapshot, function_details, moto_client, stack_details
from tests.support.netns.namespace import assert_private_namespace, bind_resolv_conf, loopback_up
from tests.support.netns.processes import Child, http_get, run_logged
from tests.support.netns.tls import TlsFiles, TlsTerminator, make_tls_files
from tests.support.waiting import wait_until


@dataclass
class Secrets:
    """Every secret of the run, so logs can be scanned and masked. Never serialised."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, value: str) -> None:
        if value:
            self.values[kind] = value

    def leaks(self, text: str) -> list[str]:
        return sorted(kind for kind, value in self.values.items() if value in text)

    def mask(self, text: str) -> str:
        for kind, value in self.values.items():
            text = text.replace(value, f"<{kind}>")
        return text


@dataclass
class Workspace:
    """Files of one run, all under the directory the outer test owns."""

    root: Path

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def log(self, name: str) -> Path:
        return self.path("logs", f"{name}.log")

    def setup(self) -> None:
        for sub in ("logs", "daemon-home/.aws", "daemon-home/run", "client-home", "tls"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        self.path("daemon-home", "run").chmod(0o700)


def run_marker(ws: Workspace) -> dict[str, str]:
    """The env var that tags every process of this run (see :func:`leftover_processes`)."""
    return {RUN_MARKER: os.environ.get(RUN_MARKER, str(ws.root))}


def daemon_env(ws: Workspace) -> dict[str, str]:
    """A cross-account profile (base keys in 123456789012, role in 222222222222) in a HOME
    of its own, STS pointed at plain-http moto, the token file we pre-created."""
    home = ws.path("daemon-home")
    home.joinpath(".aws", "config").write_text(
        f"[profile base]\nregion = {REGION}\n\n"
        f"[profile {PROFILE}]\nrole_arn = {ROLE_ARN}\nsource_profile = base\nregion = {REGION}\n"
    )
    creds = home.joinpath(".aws", "credentials")
    creds.touch(mode=0o600)
    creds.write_text(f"[base]\naws_access_key_id = {BASE_KEY_ID}\naws_secret_access_key = {BASE_SECRET}\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        "AWS_ENDPOINT_URL_STS": MOTO_URL,
        "AWS_EC2_METADATA_DISABLED": "true",
        "ROLEBROKER_TOKEN_FILE": str(home / "run" / "token"),
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONUNBUFFERED": "1",
        **run_marker(ws),
    }


def serverless_env(ws: Workspace, token: str, tls: TlsFiles, node: str) -> dict[str, str]:
    """Nothing but the container endpoint can supply credentials: no profile, no keys, an
    empty HOME (no ~/.aws), no AWS_SDK_LOAD_CONFIG, IMDS disabled."""
    return {
        "PATH": f"{Path(node).parent}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(ws.path("client-home")),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://{LOOPBACK}:{DAEMON_PORT}/creds/{PROFILE}",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NODE_EXTRA_CA_CERTS": str(tls.ca_cert),
        **SERVERLESS_QUIET_ENV,
        **run_marker(ws),
    }


@dataclass
class Report:
    """The JSON the outer test asserts on: facts and masked log tails, no secret."""

    data: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.data.setdefault("timings", {})[step] = round(time.monotonic() - start, 2)


def daemon_profile_status(token: str) -> dict[str, Any]:
    """The daemon's own view of the profile (/status): was it asked, how many STS calls."""
    status, body = http_get(f"http://{LOOPBACK}:{DAEMON_PORT}/status", {"Authorization": token})
    if status != 200:
        return {"http_status": status}
    rows = json.loads(body).get("profiles", [])
    row: dict[str, Any] = next((r for r in rows if r.get("name") == PROFILE), {})
    keep = ("state", "last_used", "sts_calls", "role_arn", "last_error", "cached")
    return {k: row.get(k) for k in keep}


def fetch_served_secrets(token: str, found: Secrets) -> dict[str, Any]:
    """Ask the daemon once, as the client did, to learn the secrets it hands out (the same
    cached credentials serverless got, as long as ``sts_calls`` did not move)."""
    status, body = http_get(f"http://{LOOPBACK}:{DAEMON_PORT}/creds/{PROFILE}", {"Authorization": token})
    if status != 200:
        return {"http_status": status}
    creds = json.loads(body)
    found.add("served SecretAccessKey", creds.get("SecretAccessKey", ""))
    found.add("served Token", creds.get("Token", ""))
    return {"http_status": status, "keys": sorted(creds), "expiration": creds.get("Expiration")}


@dataclass
class Services:
    """What runs inside the namespace for the client under test."""

    tls: TlsFiles
    dns: DnsResponder
    terminator: TlsTerminator
    daemon: Child


def start_services(ws: Workspace, stack: contextlib.ExitStack) -> Services:
    """Loopback, DNS, TLS, moto and the daemon; each is registered on ``stack`` for
    stopping the moment it exists, so a failure half-way leaves nothing running."""
    loopback_up()
    bind_resolv_conf(ws.path("tls"))
    tls = make_tls_files(ws.path("tls"))
    moto_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **run_marker(ws)}
    moto_argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(MOTO_PORT)]
    stack.callback(Child("moto", moto_argv, moto_env, ws.log("moto")).stop)
    dns = DnsResponder().start()
    stack.callback(dns.stop)
    terminator = TlsTerminator(tls, MOTO_PORT).start()
    stack.callback(terminator.stop)
    daemon_argv = [sys.executable, "-m", "rolebroker", "serve", "--host", LOOPBACK]
    daemon_argv += ["--port", str(DAEMON_PORT), "--refresh-before", "300"]
    daemon = Child("daemon", daemon_argv, daemon_env(ws), ws.log("daemon"), cwd=REPO)
    stack.callback(daemon.stop)
    ready: dict[str, Any] = {"step": 0.1, "ignoring": (OSError,)}  # refused = not yet
    wait_until(lambda: http_get(f"{MOTO_URL}/moto-api/", timeout=2)[0] == 200, 60, "moto", **ready)
    healthz = f"http://{LOOPBACK}:{DAEMON_PORT}/healthz"
    wait_until(lambda: daemon.running() and http_get(healthz, timeout=1)[0] == 200, 30, "daemon", **ready)
    return Services(tls, dns, terminator, daemon)


def warm_moto() -> None:
    """moto imports each service lazily (CloudFormation pulls in cfn-lint): pay for that
    here, read-only, rather than inside the 1 s credential and request timeouts of the
    client. STS first, so that the daemon's cold AssumeRole is quick too."""
    moto_client("sts", BASE_ACCOUNT).get_caller_identity()
    moto_client("cloudformation", BASE_ACCOUNT).list_stacks()
    moto_client("lambda", BASE_ACCOUNT).list_functions()


def record_network(services: Services, data: dict[str, Any]) -> None:
    """What the client looked up and connected to: proves it stayed on AWS names."""
    stats = services.terminator.stats
    data["dns_names"] = sorted(services.dns.names)
    data["tls"] = {
        "sni": sorted(stats.sni),
        "connections": stats.connections,
        "bytes_up": stats.bytes_up,
        "bytes_down": stats.bytes_down,
        "errors": sorted(set(stats.errors)),
    }


def prepare_run(ws: Workspace, found: Secrets) -> tuple[str, Path]:
    """Token file (pre-created, 0600, no trailing newline: a newline crashes aws-sdk v2)
    and a copy of the service, so serverless writes its .serverless/ outside the tree."""
    ws.setup()
    found.add("base secret key", BASE_SECRET)
    token = secrets.token_urlsafe(32)
    found.add("auth token", token)
    token_file = ws.path("daemon-home", "run", "token")
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    service = ws.path("service")
    shutil.copytree(SERVICE_DIR, service, ignore=shutil.ignore_patterns(".serverless", "node_modules"))
    return token, service


def serverless_e2e(ws: Workspace, report: Report, found: Secrets) -> None:
    """Inside the namespace: start the services, deploy, look, remove, look again. Each
    step writes its facts into ``report`` as soon as it has them."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH")
    token, service = prepare_run(ws, found)
    data = report.data
    with contextlib.ExitStack() as stack:
        with report.timed("setup"):
            services = start_services(ws, stack)
        stack.callback(record_network, services, data)
        data["resolved_amazonaws"] = socket.gethostbyname(f"sts.{REGION}.amazonaws.com")
        with report.timed("warm moto"):
            warm_moto()
        data["daemon_before"] = daemon_profile_status(token)
        sls, env = [node, str(SERVERLESS_JS)], serverless_env(ws, token, services.tls, node)
        with report.timed("deploy"):
            data["deploy_rc"] = run_logged([*sls, "deploy"], env, ws.log("deploy"), 150, service)
        data["daemon_after_deploy"] = daemon_profile_status(token)
        with report.timed("inspect"):
            data["role_account"] = account_snapshot(ROLE_ACCOUNT)
            data["base_account"] = account_snapshot(BASE_ACCOUNT)
            data["stack"] = stack_details(ROLE_ACCOUNT)
            data["function"] = function_details(ROLE_ACCOUNT)
            data["stack_in_base_account"] = stack_details(BASE_ACCOUNT)
        with report.timed("remove"):
            data["remove_rc"] = run_logged([*sls, "remove"], env, ws.log("remove"), 120, service)
        data["daemon_after_remove"] = daemon_profile_status(token)
        data["served"] = fetch_served_secrets(token, found)
        data["stack_after_remove"] = stack_details(ROLE_ACCOUNT)
        data["function_after_remove"] = function_details(ROLE_ACCOUNT)
        data["role_account_after_remove"] = account_snapshot(ROLE_ACCOUNT)
        data["daemon_alive"] = services.daemon.running()
        daemon_lines = ws.log("daemon").read_text().splitlines()
        data["daemon_log_profile_lines"] = sum(f"profile={PROFILE} " in line for line in daemon_lines)


def finish_report(ws: Workspace, report: Report, found: Secrets) -> None:
    """Scan every log for every secret (kinds only in the report) and attach masked tails."""
    leaks: dict[str, list[str]] = {}
    tails: dict[str, str] = {}
    for log in sorted(ws.path("logs").glob("*.log")):
        text = log.read_text(errors="replace")
        if kinds := found.leaks(text):
            leaks[log.stem] = kinds
        tails[log.stem] = found.mask(text[-4000:])
    report.data["leaks"] = leaks
    report.data["log_tails"] = tails
    report.data["logs_dir"] = str(ws.path("logs"))
    report.data["timings"]["total"] = round(time.monotonic() - report.started, 2)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    """As PID 1 of the namespace the runner ignores SIGTERM by default; turn it into an
    exit so the ``finally`` blocks stop every child before the kernel kills the rest."""
    raise SystemExit(128 + signum)


def inner_main(workdir: Path, result: Path, outer_mount_ns: str) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    ws, report, found = Workspace(workdir), Report(), Secrets()
    report.data["timings"] = {}
    rc = 0
    try:
        assert_private_namespace(outer_mount_ns)
        serverless_e2e(ws, report, found)
    except BaseException as exc:
        report.data["error"] = found.mask("".join(traceback.format_exception(exc))[-4000:])
        rc = 1
    finally:
        ws.path("logs").mkdir(parents=True, exist_ok=True)
        finish_report(ws, report, found)
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(report.data, indent=2, sort_keys=True))
        tmp.replace(result)
    return rc
