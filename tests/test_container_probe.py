"""``doctor --containers --probe`` end to end, in a private "host" network namespace: the
project's set-up applied there, a real daemon listening there, and the probe command run
inside it with nsenter, so the probe's own bridge and namespace are made inside the test's
namespace, never on this machine's network. Every test checks that nothing is left: no probe
interface in the host namespace, no holder process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rolebroker.cli import containers_probe as probe
from rolebroker.cli import containers_setup as containers
from tests.support.bridgenet import REPO, Namespace, namespace_problem
from tests.support.ci import skip_or_fail
from tests.support.daemon import CHAIN_CONFIG, CHAIN_CREDENTIALS, AwsHome
from tests.support.procs import ManagedProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.xdist_group("container-probe")

CONTAINER_PORT = 9912
DAEMON_PORT = 9911
"""Ports inside the private "host" namespace: nothing else listens there."""
FIREWALL = (
    "table inet testfw {\n"
    "\tchain input {\n"
    "\t\ttype filter hook input priority filter; policy accept;\n"
    f'\t\tiifname "br-*" tcp dport {CONTAINER_PORT} drop\n'
    "\t}\n"
    "}\n"
)
"""A firewall of the kind ufw or a hand-written ruleset makes: container traffic to the
daemon's port is dropped after the DNAT."""


@dataclass
class Host:
    ns: Namespace
    home: AwsHome
    daemon: ManagedProcess

    def env(self) -> dict[str, str]:
        return {**self.home.env(), "ROLEBROKER_PORT": str(DAEMON_PORT), "PYTHONPATH": str(REPO / "src")}

    def argv(self, *args: str) -> list[str]:
        return self.ns.argv(sys.executable, "-m", "rolebroker", *args)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rolebroker ARGS`` in the host namespace (as root, as these tests run)."""
        return subprocess.run(
            self.argv(*args),
            env=self.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def probe_json(self, *args: str) -> dict[str, Any]:
        done = self.cli("containers", "probe", "--json", *args)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        made = result["made"]
        assert made["bridge"] not in self.links() and made["veth"] not in self.links(), made
        assert not Path(f"/proc/{made['holder_pid']}").exists(), made  # the namespace's holder is gone
        return result

    def links(self) -> list[str]:
        rows = json.loads(self.ns.run("ip", "-j", "link", "show").stdout)
        return [row["ifname"] for row in rows]

    def probe_links(self) -> list[str]:
        return [
            name
            for name in self.links()
            if name.startswith(probe.BRIDGE_PREFIX) or name.startswith(probe.VETH_PREFIX)
        ]

    def apply_rules(self) -> None:
        self.ns.run("nft", "-f", "-", stdin=containers.ruleset(CONTAINER_PORT))


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    if (problem := namespace_problem()) is not None:
        skip_or_fail(problem)
    home = AwsHome(tmp_path_factory.mktemp("container-probe") / "home")
    home.write(CHAIN_CONFIG, CHAIN_CREDENTIALS)
    ns = Namespace.create("probe-host")
    daemon: ManagedProcess | None = None
    try:
        kind: containers.LinkKind = (
            "dummy"
            if ns.run("ip", "link", "add", "rbdummy0", "type", "dummy", check=False).returncode == 0
            else "bridge"
        )
        ns.run("ip", "link", "del", "rbdummy0", check=False)
        containers.apply(containers.setup_plan(CONTAINER_PORT, link_kind=kind, persist=False), ns.runner())
        built = Host(ns, home, None)  # type: ignore[arg-type]
        argv = [sys.executable, "-m", "rolebroker", "serve", "--port", str(DAEMON_PORT)]
        daemon = built.daemon = ManagedProcess(ns.argv(*argv), built.env(), cwd=home.root)

        def ready() -> bool:
            if not daemon.running():
                raise RuntimeError(f"daemon exited:\n{daemon.output()[-2000:]}")
            return "container listener on" in daemon.output() and "listening on" in daemon.output()

        wait_until(ready, 20, "the daemon's container listener", step=0.05)
        yield built
        assert built.probe_links() == []
    finally:
        if daemon is not None:
            daemon.cleanup()
        ns.close()


@pytest.fixture
def firewall(host: Host) -> Iterator[None]:
    host.ns.run("nft", "-f", "-", stdin=FIREWALL)
    try:
        yield
    finally:
        host.ns.run("nft", "delete", "table", "inet", "testfw", check=False)


def problems(output: str) -> list[str]:
    return [line.split("PROBLEM", 1)[1].strip() for line in output.splitlines() if "  PROBLEM  " in line]


# --------------------------------------------------------------------------- the healthy path


def test_doctor_probe_reaches_the_daemons_container_listener_through_the_rules(host: Host) -> None:
    # No IP forwarding in this namespace: the DNAT target is a local address, so the request
    # is delivered, never forwarded (containers need ip_forward only to reach the internet).
    assert host.ns.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    done = host.cli("doctor", "--containers", "--probe")
    out = done.stdout
    assert f"ok       the daemon (pid {host.daemon.pid}) listens on 169.254.170.2:{CONTAINER_PORT}" in out, (
        out
    )
    assert "ok       from this machine (as a host-network container): 169.254.170.2:80 reaches" in out, out
    assert "ok       from a throwaway container (198.19.170.2 on bridge br-rbp" in out, out
    assert "(401 MissingToken without a grant, as expected)" in out
    assert f"pid {host.daemon.pid} (" in out.split("throwaway container")[1]  # the socket's holder is named
    # The boot unit is the only thing this namespace cannot have (it is a file in /etc).
    assert [p for p in problems(out) if "re-applies" not in p and "is missing" not in p] == [], out
    assert host.probe_links() == []
    # The daemon saw the probe as what it is: a request without a grant, from the probe's address.
    audit = host.home.root / "state" / "rolebroker" / "audit.jsonl"
    wait_until(lambda: "rolebroker-doctor-probe" in (audit.read_text() if audit.exists() else ""), 5, "audit")
    lines = [json.loads(line) for line in audit.read_text().splitlines() if "rolebroker-doctor-probe" in line]
    assert {line.get("source") for line in lines} >= {"198.19.170.2"}, lines
    assert {line.get("outcome") for line in lines} == {"MissingToken"}, lines


@pytest.mark.parametrize("bridge_nf", ["0", "1"])
def test_the_probe_works_with_and_without_br_netfilter(host: Host, bridge_nf: str) -> None:
    sysctl = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not sysctl.exists():
        pytest.skip("no br_netfilter in this kernel")
    before = host.ns.run("cat", str(sysctl)).stdout.strip()
    host.ns.run("sh", "-c", f"echo {bridge_nf} > {sysctl}")  # per network namespace (Linux >= 5.3)
    try:
        result = host.probe_json("--timeout", "2")
    finally:
        host.ns.run("sh", "-c", f"echo {before} > {sysctl}")
    [finding] = result["probe"]
    assert finding["level"] == "ok", finding
    assert host.probe_links() == []


# --------------------------------------------------------------------------- broken paths


def test_without_the_rules_the_probe_names_the_set_up(host: Host) -> None:
    host.ns.run("nft", "delete", "table", containers.TABLE_FAMILY, containers.TABLE)
    try:
        done = host.cli("doctor", "--containers", "--probe")
        result = host.probe_json("--timeout", "1")
    finally:
        host.apply_rules()
    assert done.returncode == 1
    found = problems(done.stdout)
    assert "nftables table inet rolebroker is missing" in found, done.stdout
    assert any(
        p.startswith("from a throwaway container") and "port 80 of 169.254.170.2 is not forwarded" in p
        for p in found
    ), done.stdout
    [finding] = result["probe"]
    assert finding["level"] == "PROBLEM" and finding["fix"] == containers.SETUP_FIX, finding
    assert result["rules"]["level"] == "PROBLEM"
    assert host.probe_links() == []


def test_a_daemon_not_listening_on_the_container_port_is_named_with_the_restart(host: Host) -> None:
    """The rules forward to a port the daemon does not listen on (as after changing
    container_port without a restart): the real daemon's pid from /status, the real socket
    table, and the probe's refusal all say so."""
    other = CONTAINER_PORT + 1
    host.ns.run("nft", "-f", "-", stdin=containers.ruleset(other))
    try:
        done = subprocess.run(
            host.argv("doctor", "--containers", "--probe"),
            env={**host.env(), "ROLEBROKER_CONTAINER_PORT": str(other)},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        host.apply_rules()
    found = problems(done.stdout)
    listener = f"the daemon (pid {host.daemon.pid}) does not listen on 169.254.170.2:{other}"
    assert any(p.startswith(listener) for p in found), done.stdout
    assert any(
        p.startswith("from a throwaway container") and f"nothing listens on 169.254.170.2:{other}" in p
        for p in found
    ), done.stdout
    assert done.stdout.count("systemctl --user restart rolebroker") >= 2
    assert host.probe_links() == []


def test_a_firewall_that_drops_container_traffic_is_named(host: Host, firewall: None) -> None:
    started = time.monotonic()
    result = host.probe_json("--timeout", "1")
    assert time.monotonic() - started < 10
    [finding] = result["probe"]
    assert finding["level"] == "PROBLEM" and "no answer (timeout)" in finding["what"], finding
    assert "chain inet testfw input" in finding["fix"], finding
    assert host.probe_links() == []


# --------------------------------------------------------------------------- clean-up


def _start_probe(host: Host, timeout: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        host.argv("containers", "probe", "--timeout", timeout),
        env=host.env(),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _mid_request(host: Host, prober: subprocess.Popen[str]) -> int:
    """Waits until the probe's container is wired (its veth is in the bridge); returns the
    holder's pid."""
    veth = f"{probe.VETH_PREFIX}{prober.pid:x}"

    def wired() -> bool:
        assert prober.poll() is None, prober.communicate()
        return veth in host.links() and bool(children_of(prober.pid))

    wait_until(wired, 10, "the probe's veth", step=0.02)
    time.sleep(0.3)  # into the request, which the firewall makes wait
    [holder] = children_of(prober.pid)
    return holder


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_probe_removes_everything(host: Host, firewall: None, signum: int) -> None:
    prober = _start_probe(host, "20")
    try:
        holder = _mid_request(host, prober)
        prober.send_signal(signum)
        _out, err = prober.communicate(timeout=10)
    finally:
        if prober.poll() is None:
            prober.kill()
            prober.communicate()
    assert prober.returncode == 130, err
    assert "removed everything" in err
    assert host.probe_links() == []
    assert not Path(f"/proc/{holder}").exists()


def test_a_killed_probe_leaves_only_its_bridge_which_the_next_probe_removes(
    host: Host, firewall: None
) -> None:
    prober = _start_probe(host, "20")
    try:
        holder = _mid_request(host, prober)
        prober.kill()
        prober.communicate(timeout=10)
    finally:
        if prober.poll() is None:
            prober.kill()
            prober.communicate()
    bridge = f"{probe.BRIDGE_PREFIX}{prober.pid:x}"
    # The holder dies with the prober (PR_SET_PDEATHSIG), the namespace and its veth with it.
    wait_until(lambda: not Path(f"/proc/{holder}").exists(), 5, "the holder's end")
    wait_until(lambda: host.probe_links() == [bridge], 5, "the namespace's end")
    try:
        result = host.probe_json("--timeout", "1")
        left = host.probe_links()
    finally:
        host.ns.run("ip", "link", "del", bridge, check=False)
    swept, blocked = result["probe"]
    assert swept["level"] == "note" and bridge in swept["what"], swept
    assert blocked["level"] == "PROBLEM"  # the firewall is still there
    assert left == []
