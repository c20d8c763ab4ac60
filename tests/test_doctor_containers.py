"""In process: ``doctor --containers`` findings over an injected system (commands, socket
table, daemon, requests, sudo), no namespace and no daemon. test_container_probe.py runs
the real thing in private network namespaces."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rolebroker.cli import containers_doctor as cdoctor
from rolebroker.cli import containers_probe as probe
from rolebroker.cli import containers_setup as setup
from rolebroker.cli.containers import containers_group
from rolebroker.cli.containers_setup import Outcome
from rolebroker.cli.doctor import Finding, Level
from rolebroker.config import Settings
from rolebroker.procfs import Listener, Process

PORT = 9912
ME = 4242
DAEMON_PID = 777
ADDRESS_OK = json.dumps([{"flags": ["UP"], "addr_info": [{"local": setup.ADDRESS}]}])
RULES_OK = json.dumps(
    {
        "nftables": [
            {"chain": {"name": "prerouting"}},
            {"chain": {"name": "input"}},
            {"rule": {"expr": [{"dnat": {"addr": setup.ADDRESS, "port": PORT}}]}},
            {"rule": {"expr": [{"drop": None}]}},
        ]
    }
)
RUNNING = cdoctor.DaemonView(DAEMON_PID, True)
REFUSAL = probe.Reply("answer", 401, "MissingToken", "send the grant in the Authorization header")
SETUP_OK = {("ip",): Outcome(0, ADDRESS_OK, ""), ("nft",): Outcome(0, RULES_OK, "")}
NO_ROOT = {("ip",): Outcome(0, ADDRESS_OK, ""), ("nft",): Outcome(1, "", "Error: Operation not permitted")}


def ours(pid: int = DAEMON_PID, uid: int = ME) -> Listener:
    return Listener(setup.ADDRESS, PORT, uid, 1, (Process(pid, "python -m rolebroker serve"),))


@dataclass
class Fake:
    """A recording stand-in for everything the checks touch."""

    outcomes: dict[tuple[str, ...], Outcome] = field(default_factory=lambda: dict(SETUP_OK))
    holders: list[Listener] = field(default_factory=lambda: [ours()])
    view: cdoctor.DaemonView = RUNNING
    host_reply: probe.Reply = REFUSAL
    sudo_run: cdoctor.SudoRun | None = None
    ran: list[tuple[str, ...]] = field(default_factory=list)
    requests: int = 0
    probed: list[dict[str, Any]] = field(default_factory=list)
    sudo_argv: list[str] = field(default_factory=list)

    def runner(self, argv: Sequence[str], stdin: str | None) -> Outcome:
        self.ran.append(tuple(argv))
        for prefix in sorted(self.outcomes, key=len, reverse=True):
            if tuple(argv[: len(prefix)]) == prefix:
                return self.outcomes[prefix]
        return Outcome(0, "", "")

    def host_request(self, timeout: float) -> probe.Reply:
        self.requests += 1
        return self.host_reply

    def prober(self, port: int, **kwargs: Any) -> probe.ProbeResult:
        self.probed.append({"port": port, **kwargs})
        return probe.ProbeResult([Finding(Level.OK, "from a throwaway container: reached")])

    def sudo(self, argv: Sequence[str]) -> cdoctor.SudoRun:
        self.sudo_argv = list(argv)
        assert self.sudo_run is not None, "sudo must not run here"
        return self.sudo_run

    def system(self, euid: int = ME, sudo_uid: int | None = None, tmp: Path | None = None) -> cdoctor.System:
        unit = tmp / "unit" if tmp else Path("/nonexistent/unit")
        if tmp:
            unit.write_text("")
        return cdoctor.System(
            euid,
            euid,
            sudo_uid,
            runner=self.runner,
            unit_path=unit,
            daemon=lambda _settings: self.view,
            holders=lambda _port: self.holders,
            host_request=self.host_request,
            prober=self.prober,
            sudo=self.sudo,
        )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(port=9911, token_file=tmp_path / "token", container_port=PORT)


def by_level(findings: list[Finding], level: Level) -> dict[str, str]:
    return {f.what: f.fix for f in findings if f.level is level}


# -- the daemon's listener --------------------------------------------------------------------


def test_the_daemons_own_listener_is_ok(settings: Settings) -> None:
    found = cdoctor.listener_finding(settings, cdoctor.DaemonView(DAEMON_PID, True), [ours()], ME)
    assert found.level is Level.OK and f"the daemon (pid {DAEMON_PID}) listens on" in found.what


@pytest.mark.parametrize(
    ("mode", "view", "fix"),
    [
        ("auto", cdoctor.DaemonView(DAEMON_PID, True), 'containers = "on" in config.toml'),
        ("on", cdoctor.DaemonView(DAEMON_PID, True), "systemctl --user restart rolebroker"),
        ("off", cdoctor.DaemonView(DAEMON_PID, True), 'set containers = "auto" (or "on")'),
        ("auto", cdoctor.DaemonView(None, False, "connection refused"), "rolebroker serve"),
    ],
)
def test_a_listener_that_is_off_names_why_and_the_fix(
    settings: Settings, mode: str, view: cdoctor.DaemonView, fix: str
) -> None:
    found = cdoctor.listener_finding(replace(settings, containers=mode), view, [], ME)
    assert found.level is Level.PROBLEM and "169.254.170.2:9912" in found.what, found
    assert fix in found.fix, found.fix
    if view.running is not False:
        assert "after the set-up: systemctl --user restart rolebroker" in found.fix or mode == "off"


def test_another_users_socket_on_the_container_port_is_a_squatter(settings: Settings) -> None:
    squatter = Listener(setup.ADDRESS, PORT, 1001, 9, (Process(55, "nc -l 9912"),))
    found = cdoctor.listener_finding(settings, cdoctor.DaemonView(DAEMON_PID, True), [squatter], ME)
    assert found.level is Level.PROBLEM and found.what.startswith("another user holds"), found
    assert "uid 1001" in found.what and "grants" in found.why
    # Not the daemon, but ours: still the wrong process.
    mine = cdoctor.listener_finding(settings, cdoctor.DaemonView(DAEMON_PID, True), [ours(pid=56)], ME)
    assert mine.level is Level.PROBLEM and "not by the daemon (pid 777)" in mine.what
    # The daemon's pid unknown (no token): say who holds it, do not guess.
    unknown = cdoctor.listener_finding(settings, cdoctor.DaemonView(None, True, "no token"), [ours()], ME)
    assert unknown.level is Level.NOTE and "no token" in unknown.why
    # Root-held sockets are never called squatters (only root can make them).
    root = cdoctor.listener_finding(settings, cdoctor.DaemonView(None, True, "x"), [ours(uid=0)], ME)
    assert root.level is Level.NOTE


# -- what a request's outcome means --------------------------------------------------------

OK_RULES = Finding(Level.OK, "rules ok")
NO_RULES = Finding(Level.PROBLEM, "nftables table inet rolebroker is missing", "", setup.SETUP_FIX)
UNKNOWN_RULES = Finding(Level.NOTE, "cannot read the rules without root")


@pytest.mark.parametrize(
    ("reply", "rules", "listener_off", "level", "expect"),
    [
        (REFUSAL, OK_RULES, False, Level.OK, "401 MissingToken without a grant, as expected"),
        (probe.Reply("refused"), NO_RULES, False, Level.PROBLEM, setup.SETUP_FIX),
        (probe.Reply("refused"), UNKNOWN_RULES, True, Level.PROBLEM, 'containers = "on"'),
        (probe.Reply("timeout"), NO_RULES, False, Level.PROBLEM, setup.SETUP_FIX),
        (probe.Reply("timeout"), OK_RULES, False, Level.PROBLEM, "ufw allow in on docker0"),
        (
            probe.Reply("answer", 200, detail="HTTP 200, not a rolebroker error body"),
            OK_RULES,
            False,
            Level.PROBLEM,
            "stop it",
        ),
        (
            probe.Reply("answer", 403, "ForbiddenSource", "local containers only"),
            OK_RULES,
            False,
            Level.PROBLEM,
            "message",
        ),
        (
            probe.Reply("unreachable", detail="No route to host"),
            OK_RULES,
            False,
            Level.PROBLEM,
            setup.SETUP_FIX,
        ),
    ],
)
def test_each_outcome_of_the_request_has_its_fix(
    reply: probe.Reply, rules: Finding, listener_off: bool, level: Level, expect: str
) -> None:
    found = probe.verdict(reply, where="from here", port=PORT, rules=rules, listener_off=listener_off)
    assert found.level is level, found
    assert expect in (found.what + found.fix), found


def test_a_timeout_names_the_chains_that_drop() -> None:
    ruleset = {
        "nftables": [
            {
                "chain": {
                    "family": "inet",
                    "table": "filter",
                    "name": "input",
                    "hook": "input",
                    "policy": "drop",
                }
            },
            {"chain": {"family": "inet", "table": "fw", "name": "in", "hook": "input", "policy": "accept"}},
            {"rule": {"family": "inet", "table": "fw", "chain": "in", "expr": [{"drop": None}]}},
            {
                "chain": {
                    "family": "inet",
                    "table": "quiet",
                    "name": "in",
                    "hook": "input",
                    "policy": "accept",
                }
            },
            {
                "chain": {
                    "family": "inet",
                    "table": "rolebroker",
                    "name": "input",
                    "hook": "input",
                    "policy": "accept",
                }
            },
            {"rule": {"family": "inet", "table": "rolebroker", "chain": "input", "expr": [{"drop": None}]}},
        ]
    }
    drops = probe.input_drops(ruleset)
    assert drops == ["chain inet filter input", "chain inet fw in"]
    found = probe.verdict(
        probe.Reply("timeout"), where="x", port=PORT, rules=OK_RULES, listener_off=False, drops=drops
    )
    assert "(here: chain inet filter input, chain inet fw in)" in found.fix


def test_the_expected_refusal_from_another_users_socket_is_still_a_squatter() -> None:
    squatter = Listener(setup.ADDRESS, PORT, 1001, 9, (Process(55, "fake-rolebroker"),))
    found = probe.verdict(
        REFUSAL, where="x", port=PORT, rules=OK_RULES, listener_off=False, holders=[squatter], me=ME
    )
    assert found.level is Level.PROBLEM and "another user" in found.what
    shell = probe.verdict(
        REFUSAL, where="x", port=PORT, rules=OK_RULES, listener_off=False, holders=[squatter]
    )
    assert shell.level is Level.OK  # a root shell: whose daemon it is, is unknown


# -- the probe's names and addresses -----------------------------------------------------------


def test_the_probe_takes_the_first_free_slash_30_of_its_range() -> None:
    assert probe.pick_subnet([], []) == ipaddress.IPv4Network("198.19.170.0/30")
    routes = [
        {"dst": "default", "gateway": "10.0.0.1"},
        {"dst": "198.19.170.0/29"},
        {"dst": "10.0.0.0/8"},
    ]
    addresses = [{"addr_info": [{"local": "198.19.170.9", "prefixlen": 32}]}]
    assert probe.pick_subnet(routes, addresses) == ipaddress.IPv4Network("198.19.170.12/30")
    assert probe.pick_subnet([{"dst": "198.18.0.0/15"}], []) is None
    assert probe.pick_subnet([{"dst": "198.19.170.0/24"}], []) is None
    assert ipaddress.ip_address("198.19.170.2").is_private  # the listener's source check admits it


def test_only_bridges_of_dead_probers_are_swept() -> None:
    links = [
        {"ifname": "br-rbp10"},  # pid 16: dead
        {"ifname": "br-rbp11"},  # pid 17: alive
        {"ifname": "br-0123456789ab"},  # a Docker network: never
        {"ifname": "docker0"},
        {"ifname": "br-rbpzz"},
    ]
    assert probe.stale_bridges(links, lambda pid: pid == 17) == ["br-rbp10"]
    wiring = probe.Wiring.for_pid(4194304, ipaddress.IPv4Network("198.19.170.4/30"))
    assert len(wiring.bridge) <= 15 and len(wiring.veth) <= 15  # IFNAMSIZ
    assert (wiring.gateway, wiring.address) == ("198.19.170.5", "198.19.170.6")


def test_no_free_range_refuses_and_changes_nothing() -> None:
    fake = Fake(
        outcomes={("ip", "-j", "-4", "route"): Outcome(0, json.dumps([{"dst": "198.19.0.0/16"}]), "")}
    )
    result = probe.run_probe(PORT, rules=OK_RULES, address_ok=True, runner=fake.runner)
    [finding] = result.findings
    assert finding.level is Level.PROBLEM and "nothing was changed" in finding.what
    assert not [argv for argv in fake.ran if "add" in argv]


def test_without_the_address_nothing_is_sent_anywhere(settings: Settings) -> None:
    """169.254.170.2 missing here would route the request to the network (on EC2: the real
    ECS agent): neither the host request nor the probe sends anything then."""
    fake = Fake(outcomes={("ip",): Outcome(1, "", 'Device "rolebroker0" does not exist.'), **NO_ROOT})
    fake.outcomes[("ip",)] = Outcome(1, "", 'Device "rolebroker0" does not exist.')
    findings = cdoctor.diagnose(settings, run_probe=True, system=fake.system(euid=0))
    assert fake.requests == 0
    assert fake.probed[0]["address_ok"] is False
    result = probe.run_probe(PORT, rules=OK_RULES, address_ok=False, runner=fake.runner)
    assert result.findings[0].level is Level.NOTE and fake.ran.count(("ip", "link", "add")) == 0
    assert "interface rolebroker0 is missing" in by_level(findings, Level.PROBLEM)


# -- the doctor section ------------------------------------------------------------------------


def test_without_root_the_probe_is_a_note_with_the_exact_command(settings: Settings, tmp_path: Path) -> None:
    fake = Fake(outcomes=dict(NO_ROOT))
    findings = cdoctor.diagnose(settings, run_probe=False, system=fake.system(tmp=tmp_path))
    notes = by_level(findings, Level.NOTE)
    [fix] = [f for w, f in notes.items() if w.startswith("not probed")]
    assert fix.startswith("rolebroker doctor --containers --probe   # through sudo, which runs: sudo ")
    assert fix.endswith("-m rolebroker containers probe --port 9912")
    assert "cannot read nftables table inet rolebroker without root" in notes
    assert fake.sudo_argv == [] and fake.probed == []  # no sudo, no namespace without --probe
    assert fake.requests == 1  # the host path needs no root
    assert [f.level for f in findings].count(Level.PROBLEM) == 0


def test_probe_without_root_asks_sudo_once_and_uses_its_rules_and_findings(
    settings: Settings, tmp_path: Path
) -> None:
    root_rules = Finding(Level.OK, "nftables table inet rolebroker forwards (seen as root)")
    body = {
        "rules": cdoctor.findings_to_json([root_rules])[0],
        "probe": cdoctor.findings_to_json([Finding(Level.OK, "from a throwaway container: reached")]),
    }
    fake = Fake(outcomes=dict(NO_ROOT), sudo_run=cdoctor.SudoRun(0, json.dumps(body)))
    findings = cdoctor.diagnose(settings, run_probe=True, system=fake.system(tmp=tmp_path))
    assert fake.sudo_argv[-5:] == ["containers", "probe", "--port", "9912", "--json"]
    assert findings[1] == root_rules  # replaces "cannot read ... without root"
    assert findings[-1].what == "from a throwaway container: reached"
    assert fake.probed == []  # never in-process without root


def test_probe_without_sudo_says_how_to_run_it_as_root(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sudo here
    missing = cdoctor.run_through_sudo(["true"])
    assert missing == cdoctor.SudoRun(127, "", "cannot run sudo: No such file or directory")
    (tmp_path / "sudo").write_text("")  # there, but not executable (as for a PATH entry it cannot read)
    denied = cdoctor.run_through_sudo(["true"])
    assert denied == cdoctor.SudoRun(127, "", "cannot run sudo: Permission denied")
    fake = Fake(outcomes=dict(NO_ROOT), sudo_run=missing)
    findings = cdoctor.diagnose(settings, run_probe=True, system=fake.system(tmp=tmp_path))
    problem = by_level(findings, Level.PROBLEM)
    what = "the probe did not run through sudo (cannot run sudo: No such file or directory)"
    assert problem[what].startswith("run it as root: sudo "), problem


def test_as_root_the_probe_runs_in_process_with_the_root_view_of_the_rules(
    settings: Settings, tmp_path: Path
) -> None:
    fake = Fake()
    findings = cdoctor.diagnose(
        settings, run_probe=True, system=fake.system(euid=0, sudo_uid=ME, tmp=tmp_path)
    )
    [call] = fake.probed
    assert call["address_ok"] is True and call["rules"].level is Level.OK and call["me"] == ME
    assert fake.sudo_argv == []
    assert [f.level for f in findings] == [Level.OK] * len(findings), findings


def test_the_host_path_finding_follows_the_rules_and_listener(settings: Settings, tmp_path: Path) -> None:
    fake = Fake(holders=[], host_reply=probe.Reply("refused"))
    findings = cdoctor.diagnose(settings, run_probe=False, system=fake.system(tmp=tmp_path))
    problem = by_level(findings, Level.PROBLEM)
    host = [w for w in problem if w.startswith(cdoctor.HOST_WHERE)]
    assert host and "nothing listens on 169.254.170.2:9912" in host[0], problem
    assert "restart" in problem[host[0]]


def test_probe_argv_runs_this_interpreter_without_the_current_directory() -> None:
    argv = cdoctor.probe_argv(10123)
    assert argv[-7:] == ["-P", "-m", "rolebroker", "containers", "probe", "--port", "10123"]


def test_containers_probe_without_root_prints_the_command_and_runs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: ME)
    ran: list[Any] = []

    def execvp(*args: Any) -> None:
        ran.append(args)
        raise SystemExit(0)  # exec never returns

    monkeypatch.setattr("os.execvp", execvp)
    result = CliRunner().invoke(containers_group, ["probe", "--port", "10123"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sudo ") and "containers probe --port 10123" in result.stdout
    assert "nothing was run" in result.stderr and ran == []
    consent = CliRunner().invoke(containers_group, ["probe", "--port", "10123", "--apply"])
    assert consent.exit_code == 0, consent.output
    assert ran and ran[0][0] == "sudo" and ran[0][1][:2] == ["sudo", "--"]


# -- the user's socket unit -------------------------------------------------------------------

SHOW = ("systemctl", "--user", "show")
HELD = f"LoadState=loaded\nActiveState=active\nListen={setup.ADDRESS}:{PORT} (Stream)\n"


@pytest.mark.parametrize(
    ("show", "linger", "level", "what", "fix"),
    [
        (Outcome(0, HELD, ""), "yes\n", Level.OK, "holds 169.254.170.2:9912 while the daemon is stopped", ""),
        (Outcome(0, HELD, ""), "no\n", Level.NOTE, "not from boot", 'loginctl enable-linger "$USER"'),
        (
            Outcome(0, "LoadState=not-found\nActiveState=inactive\nListen=\n", ""),
            "yes\n",
            Level.NOTE,
            "nothing holds 169.254.170.2:9912 while the daemon is stopped (rolebroker-containers.socket: "
            "not-found)",
            "rolebroker containers setup",
        ),
        (
            Outcome(0, "LoadState=loaded\nActiveState=failed\nListen=169.254.170.2:9912 (Stream)\n", ""),
            "yes\n",
            Level.NOTE,
            "(rolebroker-containers.socket: failed)",
            "rolebroker containers setup",
        ),
        (
            Outcome(0, "LoadState=loaded\nActiveState=active\nListen=169.254.170.2:9000 (Stream)\n", ""),
            "yes\n",
            Level.PROBLEM,
            "holds 169.254.170.2:9000, but the daemon's container port is 169.254.170.2:9912",
            "ListenStream=169.254.170.2:9912",
        ),
        (
            Outcome(1, "", "Failed to connect to bus: No medium found\n"),
            "yes\n",
            Level.NOTE,
            "cannot ask your user manager whether rolebroker-containers.socket holds 169.254.170.2:9912 "
            "(Failed to connect to bus",
            "",
        ),
    ],
)
def test_the_socket_unit_that_holds_the_port_between_daemon_runs(
    settings: Settings, show: Outcome, linger: str, level: Level, what: str, fix: str
) -> None:
    fake = Fake(outcomes={**SETUP_OK, SHOW: show, ("loginctl",): Outcome(0, linger, "")})
    findings = cdoctor.diagnose(settings, run_probe=False, system=replace(fake.system(), user="alice"))
    (found,) = [f for f in findings if "rolebroker-containers.socket" in f.what]
    assert found.level is level and what in found.what, found
    assert fix in found.fix, found.fix
    if (
        level is not Level.PROBLEM
        and show.returncode == 0
        and "active" in show.stdout.split("ActiveState=")[1][:6]
    ):
        assert ("loginctl", "show-user", "alice", "-p", "Linger", "--value") in fake.ran


def test_as_root_the_socket_unit_is_not_asked(settings: Settings) -> None:
    """Root's user manager is not the daemon's: asking it would say nothing true."""
    fake = Fake(outcomes={**SETUP_OK, SHOW: Outcome(0, HELD, "")})
    findings = cdoctor.diagnose(settings, run_probe=False, system=fake.system(euid=0, sudo_uid=ME))
    assert not [f for f in findings if "rolebroker-containers.socket" in f.what]
    assert not [argv for argv in fake.ran if argv[:2] == ("systemctl", "--user")]
