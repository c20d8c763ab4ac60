"""End to end: an unmodified ``serverless deploy`` (Serverless Framework v3, aws-sdk v2)
takes its credentials from the rolebroker daemon and deploys into the assumed role's
account; ``serverless remove`` cleans up.

aws-sdk v2 cannot be pointed at another endpoint from the environment, so the run happens
in a private mount+net+pid namespace where every AWS host name is moto behind a TLS
terminator (see tests/support/netns/). The namespace run happens once per module; each
test below asserts one aspect of its report.

Needs root (unshare), node and tests/clients/node_modules (npm ci). Without them the
tests skip, except when ``CI`` is set: CI must run them, so they fail there instead.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import netns
from tests.support.ci import skip_or_fail
from tests.support.procs import free_port

pytestmark = pytest.mark.xdist_group("serverless")  # one namespace run, on one worker
ROLE_ACCOUNT = netns.ROLE_ACCOUNT
BASE_ACCOUNT = netns.BASE_ACCOUNT


def context(report: dict[str, Any]) -> str:
    """What a failing assertion shows: the facts and masked log tails (no secrets there)."""
    facts = {k: v for k, v in report.items() if k != "log_tails"}
    tails = "\n".join(
        f"--- {name}.log (tail) ---\n{text}" for name, text in report.get("log_tails", {}).items()
    )
    return f"\nreport: {json.dumps(facts, indent=1, sort_keys=True)}\n{tails}"


def show_now(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's capture (like ``capsys.disabled()``), so timings show in every run."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> netns.NamespaceRun:
    problem = netns.serverless_problem() or netns.namespace_problem()
    if problem:
        skip_or_fail(problem)
    workdir = tmp_path_factory.mktemp("serverless-netns")
    result = netns.run_serverless_in_namespace(workdir, timeout=240)
    timings = result.report.get("timings", {})
    line = f"serverless e2e: {result.seconds:.1f}s wall, steps (s): {timings}"
    show_now(request, line)
    # The runner stops its children and the pid namespace takes the rest: nothing may remain.
    leftovers = netns.leftover_processes(workdir)
    assert not leftovers, f"processes of the namespace run are still alive: {leftovers}"
    return result


@pytest.fixture(scope="module")
def report(run: netns.NamespaceRun) -> dict[str, Any]:
    if not run.report:
        pytest.fail(f"the namespace runner wrote no report (rc={run.returncode}):\n{run.output[-4000:]}")
    assert "error" not in run.report, (
        f"the namespace runner failed: {run.report['error']}{context(run.report)}"
    )
    return run.report


def test_namespace_plumbing_resolves_aws_to_loopback(report: dict[str, Any]) -> None:
    assert report["resolved_amazonaws"] == "127.0.0.1", context(report)
    # Serverless looked up only AWS names (no telemetry, no update check, no dashboard).
    strangers = [n for n in report["dns_names"] if not n.endswith(".amazonaws.com")]
    assert not strangers, f"serverless tried to reach non-AWS hosts: {strangers}{context(report)}"
    assert report["tls"]["connections"] > 0, context(report)
    assert not report["tls"]["errors"], context(report)


def test_deploy_lands_in_the_assumed_roles_account(report: dict[str, Any]) -> None:
    assert report["deploy_rc"] == 0, f"serverless deploy failed{context(report)}"
    stack = report["stack"]
    assert stack["exists"], f"stack {netns.STACK} missing in {ROLE_ACCOUNT}{context(report)}"
    assert stack["status"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"), context(report)
    assert {"AWS::Lambda::Function", "AWS::S3::Bucket"} <= set(stack["resources"]), context(report)
    function = report["function"]
    assert function["exists"], f"function {netns.FUNCTION} missing in {ROLE_ACCOUNT}{context(report)}"
    assert function["arn"].split(":")[4] == ROLE_ACCOUNT, context(report)
    assert function["runtime"] == "provided.al2023"
    assert any(
        b.startswith("hello-dev-serverlessdeploymentbucket") for b in report["role_account"]["buckets"]
    )


def test_nothing_lands_in_the_base_account(report: dict[str, Any]) -> None:
    assert not report["stack_in_base_account"]["exists"], context(report)
    assert report["base_account"] == {"stacks": [], "functions": [], "buckets": []}, context(report)


def test_the_daemon_served_the_deploy_profile(report: dict[str, Any]) -> None:
    before, after = report["daemon_before"], report["daemon_after_deploy"]
    # Nobody but serverless asked the daemon for `deploy` before the deploy finished.
    assert before["last_used"] is None and before["sts_calls"] == 0, context(report)
    assert after["last_used"] is not None, f"serverless never asked the daemon{context(report)}"
    assert after["sts_calls"] >= 1 and after["last_error"] is None, context(report)
    assert after["role_arn"] == netns.ROLE_ARN
    assert report["daemon_log_profile_lines"] >= 1, context(report)
    assert report["daemon_alive"], context(report)
    removed = report["daemon_after_remove"]
    assert removed["last_used"] >= after["last_used"] and removed["last_error"] is None, context(report)


def test_remove_cleans_up(report: dict[str, Any]) -> None:
    assert report["remove_rc"] == 0, f"serverless remove failed{context(report)}"
    assert not report["stack_after_remove"]["exists"], context(report)
    assert not report["function_after_remove"]["exists"], context(report)
    after = report["role_account_after_remove"]
    assert [s["status"] for s in after["stacks"]] in ([], ["DELETE_COMPLETE"]), context(report)
    assert after["functions"] == [] and after["buckets"] == [], context(report)


def test_no_secret_leaked(report: dict[str, Any]) -> None:
    served = report["served"]
    assert served["http_status"] == 200, context(report)
    # One STS call in the whole run: the creds the runner fetched at the end are the only
    # ones the daemon ever served, so scanning for them covers everything serverless got.
    assert report["daemon_after_remove"]["sts_calls"] == 1, context(report)
    for log in ("deploy", "remove", "daemon"):
        assert log in report["log_tails"], context(report)
    assert report["leaks"] == {}, f"secrets (kinds shown, not values) found in logs: {report['leaks']}"


# ---------------------------------------------------------------- harness pieces, no root needed


def test_secret_scan_names_kinds_and_masks_values() -> None:
    found = netns.Secrets()
    found.add("auth token", "tok-123")
    found.add("empty", "")
    assert found.leaks("header tok-123 here") == ["auth token"]
    assert found.mask("header tok-123 here") == "header <auth token> here"
    assert found.leaks("nothing") == []


def test_dns_answer_is_loopback_for_a_and_empty_for_aaaa() -> None:
    def query(qtype: int) -> bytes:
        name = b"".join(bytes([len(p)]) + p for p in b"cloudformation.us-east-1.amazonaws.com".split(b"."))
        return (
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
            + name
            + b"\x00"
            + qtype.to_bytes(2)
            + b"\x00\x01"
        )

    port = free_port()
    responder = netns.DnsResponder(port=port).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(query(1), ("127.0.0.1", port))
            a_reply = sock.recv(512)
            sock.sendto(query(28), ("127.0.0.1", port))
            aaaa_reply = sock.recv(512)
    finally:
        responder.stop()
    assert a_reply[:2] == b"\x12\x34" and a_reply[3] & 0x0F == 0  # same id, NOERROR
    assert int.from_bytes(a_reply[6:8]) == 1 and a_reply[-4:] == socket.inet_aton("127.0.0.1")
    assert aaaa_reply[3] & 0x0F == 0 and int.from_bytes(aaaa_reply[6:8]) == 0
    assert responder.names == {"cloudformation.us-east-1.amazonaws.com"}
    assert netns.dns_answer(b"short") is None


class _EchoDigest(http.server.BaseHTTPRequestHandler):
    """Upstream stand-in for moto: answers each PUT with the Host it saw and a body digest."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        digest, remaining = hashlib.sha256(), int(self.headers["Content-Length"])
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            digest.update(chunk)
            remaining -= len(chunk)
        body = json.dumps({"host": self.headers["Host"], "sha256": digest.hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_tls_terminator_keeps_host_and_streams_large_bodies_on_keepalive(tmp_path: Path) -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoDigest)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tls = netns.make_tls_files(tmp_path)
    port = free_port()
    terminator = netns.TlsTerminator(tls, upstream.server_address[1], port=port).start()
    trust = ssl.create_default_context(cafile=str(tls.ca_cert))
    big = os.urandom(24 * 1024 * 1024)

    def client(host: str) -> list[dict[str, str]]:
        conn = http.client.HTTPSConnection(host, port, timeout=30)
        conn.sock = trust.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=host)
        answers = []
        for body in (big, b"small"):  # two requests on one kept-alive connection
            conn.request("PUT", "/key", body=body, headers={"Host": host})
            answers.append(json.loads(conn.getresponse().read()))
        conn.close()
        return answers

    hosts = [
        "bucket-1.s3.amazonaws.com",
        "cloudformation.us-east-1.amazonaws.com",
        "api.ecr.us-east-1.amazonaws.com",
    ]
    try:
        with ThreadPoolExecutor(len(hosts)) as pool:
            results = dict(zip(hosts, pool.map(client, hosts), strict=True))
    finally:
        terminator.stop()
        upstream.shutdown()
        upstream.server_close()
    for host, answers in results.items():
        assert answers == [
            {"host": host, "sha256": hashlib.sha256(big).hexdigest()},
            {"host": host, "sha256": hashlib.sha256(b"small").hexdigest()},
        ]
    assert terminator.stats.sni == set(hosts)
    assert terminator.stats.connections == len(hosts)
