"""The root set-up for local containers (rolebroker.cli.containers_setup): the generated commands,
rules and unit as text, then the real thing in private network namespaces: a container on a
``br-*`` bridge reaches the daemon's port through 169.254.170.2:80, a LAN neighbour with a
static ARP entry gets nothing, teardown leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from rolebroker.cli import containers_setup as containers
from rolebroker.cli.containers import containers_group, render_findings
from rolebroker.cli.containers_setup import ADDRESS, ContainerSetupError, Outcome
from rolebroker.cli.doctor import Finding, Level
from tests.support.bridgenet import CONTAINER1, CONTAINER2, HOST_LAN, BridgeNet, bridgenet, namespace_problem
from tests.support.ci import skip_or_fail

PORT = 9912

# --------------------------------------------------------------------------- generated text


def test_ruleset_forwards_port_80_from_each_bridge_kind_to_the_container_port() -> None:
    text = containers.ruleset(10123)
    for name in ("docker0", "br-*", "cni-podman*", "podman*"):
        assert f'iifname "{name}" ip daddr {ADDRESS} tcp dport 80 dnat ip to {ADDRESS}:10123' in text
    assert "9912" not in text
    # The whole table is replaced in one transaction, so a second run leaves one copy.
    assert text.splitlines()[1:4] == [
        "table inet rolebroker",
        "delete table inet rolebroker",
        "table inet rolebroker {",
    ]


def test_ruleset_drops_the_address_for_anyone_but_bridges_and_lo() -> None:
    chain = containers.ruleset(PORT).split("chain input {")[1].split("}")[0].strip().splitlines()
    rules = [line.strip() for line in chain[1:]]
    assert rules[-1] == f"ip daddr {ADDRESS} drop"
    returns = {line.split('"')[1] for line in rules[:-1]}
    assert returns == {"lo", "docker0", "br-*", "cni-podman*", "podman*"}
    assert all(line.endswith(" return") for line in rules[:-1])


@pytest.mark.parametrize("port", [80, 1023, 0, 70000])
def test_privileged_or_impossible_container_ports_are_refused(port: int) -> None:
    with pytest.raises(ValueError, match="unprivileged port"):
        containers.setup_plan(port)


def test_systemd_unit_reapplies_the_same_ruleset_at_boot_and_removes_it_on_stop() -> None:
    unit = containers.systemd_unit("dummy")
    for line in (
        "Type=oneshot",
        "RemainAfterExit=yes",
        "After=network.target",
        "ExecStart=-ip link add rolebroker0 type dummy",
        f"ExecStart=ip addr replace {ADDRESS}/32 dev rolebroker0 scope host",
        f"ExecStart=nft -f {containers.RULESET_PATH}",
        "ExecStop=-nft delete table inet rolebroker",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines()
    plan = containers.setup_plan(10123)
    written = {step.argv[1]: step.stdin for step in plan.steps if step.argv[0] == "tee"}
    assert written == {
        str(containers.RULESET_PATH): containers.ruleset(10123),
        str(containers.UNIT_PATH): unit,
    }


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        skip_or_fail("systemd-analyze is not installed (Debian package systemd)")
    unit = tmp_path / containers.UNIT_NAME
    unit.write_text(containers.systemd_unit())
    done = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if any("not executable" in line or "not found" in line for line in complaints):
        skip_or_fail(f"ip or nft is not installed (Debian packages iproute2, nftables): {complaints}")
    assert done.returncode == 0 and complaints == [], complaints


def test_render_prints_runnable_commands_with_sudo_and_the_ruleset_inline() -> None:
    text = containers.render(containers.setup_plan(PORT), sudo=True)
    assert "sudo ip link add rolebroker0 type dummy" in text
    assert f"sudo nft -f - <<'EOF'\n# rolebroker: {ADDRESS}:80" in text
    assert f"sudo tee {containers.UNIT_PATH} >/dev/null <<'EOF'\n[Unit]" in text
    assert "sudo systemctl enable rolebroker-containers.service" in text
    teardown = containers.render(containers.teardown_plan(), sudo=False)
    assert "nft delete table inet rolebroker" in teardown and "sudo" not in teardown


def test_the_port_less_bridge_kind_is_the_only_difference() -> None:
    dummy, bridge = (
        containers.setup_plan(PORT, link_kind=kind, persist=False) for kind in ("dummy", "bridge")
    )
    assert [s.argv for s in dummy.steps][1:] == [s.argv for s in bridge.steps][1:]
    assert bridge.steps[0].argv == ("ip", "link", "add", "rolebroker0", "type", "bridge")


class FakeRunner:
    """Answers each command by its first words; records what ran."""

    def __init__(self, answers: dict[tuple[str, ...], Outcome]) -> None:
        self.answers, self.ran = answers, []  # type: list[tuple[str, ...]]

    def __call__(self, argv: Sequence[str], stdin: str | None) -> Outcome:
        self.ran.append(tuple(argv))
        for prefix, outcome in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return outcome
        return Outcome(0, "", "")


def test_apply_treats_already_there_and_already_gone_as_done() -> None:
    exists = Outcome(2, "", "RTNETLINK answers: File exists")
    report = containers.apply(containers.setup_plan(PORT), FakeRunner({("ip", "link", "add"): exists}))
    assert report[0].startswith("already there:") and all(line.startswith("done:") for line in report[1:])
    gone = {
        ("nft", "delete"): Outcome(1, "", "Error: No such file or directory; did you mean table 'x'?"),
        ("ip", "link", "del"): Outcome(1, "", 'Cannot find device "rolebroker0"'),
        ("systemctl", "disable"): Outcome(1, "", "Failed to disable unit: Unit file x does not exist."),
    }
    report = containers.apply(containers.teardown_plan(), FakeRunner(gone))
    assert sum(line.startswith("already gone:") for line in report) == 3


def test_apply_stops_at_a_real_failure_and_names_the_command() -> None:
    runner = FakeRunner(
        {("nft",): Outcome(1, "", "Error: Could not process rule: No such file or directory")}
    )
    runner.answers[("ip", "link", "add")] = Outcome(2, "", "Error: Unknown device type.")
    with pytest.raises(
        ContainerSetupError, match=r"'ip link add rolebroker0 type dummy' failed .*Unknown device"
    ):
        containers.apply(containers.setup_plan(PORT), runner)
    assert len(runner.ran) == 1
    with pytest.raises(ContainerSetupError, match="--link-kind bridge"):
        containers.apply(containers.setup_plan(PORT), runner)


def test_check_names_each_missing_piece_with_its_fix(tmp_path: Path) -> None:
    missing = FakeRunner(
        {
            ("ip",): Outcome(1, "", 'Device "rolebroker0" does not exist.'),
            ("nft",): Outcome(1, "", "Error: No such file or directory"),
        }
    )
    findings = containers.check(PORT, missing, tmp_path / "absent.service")
    assert [f.level for f in findings] == [Level.PROBLEM] * 3
    assert all(f.fix == "rolebroker containers setup --apply" for f in findings)
    no_root = FakeRunner({("nft",): Outcome(1, "", "Error: Operation not permitted")})
    rules = containers.check(PORT, no_root, tmp_path)[1]
    assert rules.level is Level.NOTE and rules.fix.startswith("rolebroker doctor --containers --probe")


def test_doctor_section_shows_each_fix() -> None:
    findings = [
        Finding(Level.OK, "rolebroker0 holds 169.254.170.2 and is up"),
        Finding(
            Level.PROBLEM,
            "nftables table inet rolebroker is missing",
            "why",
            "rolebroker containers setup --apply",
        ),
    ]
    text = render_findings(findings)
    assert "  ok       rolebroker0 holds" in text
    assert "  PROBLEM  nftables table inet rolebroker is missing" in text
    assert "fix: rolebroker containers setup --apply" in text


def test_cli_prints_the_plan_without_apply() -> None:
    result = CliRunner().invoke(containers_group, ["setup", "--port", "10123"])
    assert result.exit_code == 0, result.output
    assert f"dnat ip to {ADDRESS}:10123" in result.output
    assert "nothing was changed" in result.output
    assert CliRunner().invoke(containers_group, ["setup", "--port", "80"]).exit_code == 2


def test_setup_and_teardown_end_with_the_users_own_socket_unit_step() -> None:
    """No root command can make the user manager hold the container port: the set-up says
    how, after the root steps, for the port it set up (and teardown how to let go)."""
    setup = CliRunner().invoke(containers_group, ["setup"]).output
    user_part = setup[setup.index("# Then, as yourself") :]
    assert "systemctl --user enable --now rolebroker-containers.socket" in user_part
    assert "systemctl --user stop rolebroker.service" in user_part  # else the daemon may hold the port
    assert 'loginctl enable-linger "$USER"' in user_part
    assert "ListenStream=" not in user_part
    assert not [line for line in user_part.splitlines() if line.startswith("sudo")], user_part
    other = CliRunner().invoke(containers_group, ["setup", "--port", "10123"]).output
    assert f"ListenStream={ADDRESS}:10123" in other
    teardown = CliRunner().invoke(containers_group, ["teardown"]).output
    assert "systemctl --user disable --now rolebroker-containers.socket" in teardown


# --------------------------------------------------------------------------- namespaces


@pytest.fixture
def net() -> Iterator[BridgeNet]:
    if (problem := namespace_problem()) is not None:
        skip_or_fail(problem)
    with bridgenet() as built:
        yield built


def counts(net: BridgeNet) -> tuple[int, int]:
    """(tables named rolebroker, rules in them) in the host namespace."""
    listing = json.loads(net.host.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    tables = sum(item.get("table", {}).get("name") == "rolebroker" for item in listing)
    rules = sum(item.get("rule", {}).get("table") == "rolebroker" for item in listing)
    return tables, rules


def set_up(net: BridgeNet, ruleset: str | None = None) -> None:
    """The project's set-up (network part) in the host namespace; ``ruleset`` replaces
    the generated rules, to show what each rule protects."""
    net.apply(containers.setup_plan(PORT, link_kind=net.link_kind, persist=False))
    if ruleset is not None:
        net.host.run("nft", "-f", "-", stdin=ruleset)


def test_containers_on_br_bridges_reach_the_daemon_port_through_port_80(net: BridgeNet) -> None:
    set_up(net)
    stub = net.start_stub(PORT)
    first = net.probe(net.container1, f"http://{ADDRESS}/v2/credentials/grant-1")
    second = net.probe(net.container2, f"http://{ADDRESS}:80/v2/credentials/grant-2")
    host = net.probe(net.host, f"http://{ADDRESS}/from-the-host")  # host-network containers
    seen = stub.stop()
    assert first["ok"] and second["ok"] and host["ok"], (first, second, host)
    # The daemon sees each container's own address: what a source-network check needs.
    assert [(r["peer"], r["path"]) for r in seen] == [
        (CONTAINER1, "/v2/credentials/grant-1"),
        (CONTAINER2, "/v2/credentials/grant-2"),
        (ADDRESS, "/from-the-host"),
    ]
    assert {r["local"] for r in seen} == {ADDRESS}


def test_a_lan_neighbour_with_a_static_arp_entry_gets_nothing(net: BridgeNet) -> None:
    set_up(net)
    stub = net.start_stub(PORT)
    via_80 = net.probe(net.lan, f"http://{ADDRESS}/v2/credentials/x", timeout=1.0)
    direct = net.probe(net.lan, f"http://{ADDRESS}:{PORT}/v2/credentials/x", timeout=1.0)
    lan_address = net.probe(net.lan, f"http://{HOST_LAN}:{PORT}/v2/credentials/x")
    seen = stub.stop()
    assert via_80 == {"ok": False, "error": "timeout"}  # dropped: no answer at all
    assert direct == {"ok": False, "error": "timeout"}
    assert lan_address == {"ok": False, "error": "refused"}  # the listener is not on the LAN side
    assert seen == []


def test_without_the_drop_rule_the_static_arp_neighbour_gets_through(net: BridgeNet) -> None:
    """The control for the test above: the rig's attack is real, so the drop is what stops it."""
    unprotected = containers.ruleset(PORT).replace(f"\t\tip daddr {ADDRESS} drop\n", "")
    assert unprotected != containers.ruleset(PORT)
    set_up(net, unprotected)
    stub = net.start_stub(PORT)
    direct = net.probe(net.lan, f"http://{ADDRESS}:{PORT}/v2/credentials/x")
    assert stub.stop() != [] and direct["ok"], direct


@pytest.mark.parametrize("docker_first", [True, False], ids=["docker-rules-first", "docker-rules-later"])
def test_a_container_publishing_host_port_80_does_not_capture_credential_requests(
    net: BridgeNet, docker_first: bool
) -> None:
    """Docker DNATs a published port for every local address, 169.254.170.2 included, at
    priority dstnat. Among equal priorities the order depends on which table came first
    (Docker restarts re-create its rules at any time): only an earlier priority keeps
    container1's request for the daemon in both orders."""
    docker_like = (
        "table ip dockerlike {\n"
        "\tchain prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f'\t\tiifname != "br-rbtest2" fib daddr type local tcp dport 80 dnat to {CONTAINER2}:80\n'
        "\t}\n"
        "}\n"
    )
    if docker_first:
        net.host.run("nft", "-f", "-", stdin=docker_like)
    set_up(net)
    if not docker_first:
        net.host.run("nft", "-f", "-", stdin=docker_like)
    stub = net.start_stub(PORT)
    result = net.probe(net.container1, f"http://{ADDRESS}/v2/credentials/grant-1", timeout=1.0)
    assert [r["peer"] for r in stub.stop()] == [CONTAINER1], result


def test_setup_twice_is_harmless_and_teardown_removes_everything(net: BridgeNet) -> None:
    set_up(net)
    once = counts(net)
    set_up(net)
    assert once[0] == 1 and once[1] > 0 and counts(net) == once  # one table, no duplicated rules
    findings = containers.check(PORT, net.host.runner(), Path("/nonexistent/unit"))
    assert [f.level for f in findings[:2]] == [Level.OK, Level.OK], findings
    assert containers.check(PORT + 1, net.host.runner())[1].level is Level.PROBLEM  # port mismatch noticed

    teardown = containers.teardown_plan(PORT, link_kind=net.link_kind, persist=False)
    net.apply(teardown)
    assert counts(net) == (0, 0)
    assert net.host.run("ip", "link", "show", "rolebroker0", check=False).returncode != 0
    assert ADDRESS not in net.host.run("ip", "-j", "addr").stdout
    assert net.probe(net.container1, f"http://{ADDRESS}/v2/credentials/x", timeout=1.0)["ok"] is False
    assert all(line.startswith("already gone:") for line in net.apply(teardown))
    findings = containers.check(PORT, net.host.runner(), Path("/nonexistent/unit"))
    assert [f.level for f in findings] == [Level.PROBLEM] * 3


def test_the_rig_never_touches_this_machines_network() -> None:
    if (problem := namespace_problem()) is not None:
        skip_or_fail(problem)
    before = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    ns_before = os.readlink("/proc/self/ns/net")
    with bridgenet() as built:
        set_up(built)
        pids = [ns.pid for ns in (built.host, built.container1, built.container2, built.lan)]
        assert all(os.readlink(f"/proc/{pid}/ns/net") != ns_before for pid in pids)
    assert subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout == before
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
