"""The root set-up that lets local containers reach rolebroker at the ECS address.

SDKs inside a container look for credentials at ``169.254.170.2:80`` (ECS). rolebroker runs
as the user, so it cannot bind port 80; instead the set-up (run once, as root):

- puts ``169.254.170.2/32`` on an interface of its own, ``rolebroker0`` (a dummy link, or a
  port-less bridge on kernels built without the dummy driver);
- adds one nftables table, ``inet rolebroker``, that DNATs container traffic to port 80 of that
  address onto the daemon's unprivileged container port, and drops everything else sent to
  the address unless it came from a container bridge or from the host itself;
- writes a systemd unit that re-applies both at boot.

A LAN neighbour can reach the address however it likes (a static ARP entry needs no ARP
reply), so the input filter, not ARP, is what keeps it out. ``net.ipv4.conf.*.arp_ignore``
is deliberately left alone: it is per incoming interface, not per address, so changing it
would alter ARP for every address of the machine and protects nothing here.

Everything is built as plain data (:class:`Plan`), so ``render`` shows the exact commands
before ``apply`` runs them, and the tests check the generated text.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rolebroker.cli.doctor import Finding, Level

ADDRESS = "169.254.170.2"
"""The ECS credentials address every SDK accepts for plain-http container credentials."""
ECS_PORT = 80
INTERFACE = "rolebroker0"
TABLE = "rolebroker"
TABLE_FAMILY = "inet"
DEFAULT_CONTAINER_PORT = 9912
"""The daemon's container listener: unprivileged, so the daemon never needs root."""
BRIDGE_PATTERNS = ("docker0", "br-*", "cni-podman*", "podman*")
"""Docker's default and user-defined (compose) bridges, rootful Podman's CNI and netavark
bridges. Only traffic arriving on these (or on lo) may reach the address."""
NAT_PRIORITY = "-110"
"""dstnat - 10, spelled as a number (older nft refuses the name in the output hook): before
Docker's own DNAT (priority dstnat, -100): a container publishing host port 80 must not
capture other containers' credential requests to 169.254.170.2:80."""
UNIT_NAME = "rolebroker-containers.service"
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
SOCKET_UNIT = "rolebroker-containers.socket"
"""The user's own socket unit (systemd/): holds the container port while the daemon is stopped."""
RULESET_PATH = Path("/etc/rolebroker/containers.nft")

LinkKind = Literal["dummy", "bridge"]
Action = Literal["setup", "teardown"]


class ContainerSetupError(RuntimeError):
    """A set-up or teardown command failed; the message names the command and the fix."""


@dataclass(frozen=True, slots=True)
class Step:
    """One command, as root. ``done_if`` lists stderr fragments that mean the step's effect
    is already there (or already gone), which makes a repeated run harmless."""

    why: str
    argv: tuple[str, ...]
    stdin: str | None = None
    done_if: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    container_port: int
    link_kind: LinkKind
    steps: tuple[Step, ...]


def _check_port(port: int) -> int:
    if not 1024 <= port <= 65535:
        raise ValueError(f"container_port must be an unprivileged port (1024-65535), not {port}")
    return port


def ruleset(container_port: int = DEFAULT_CONTAINER_PORT) -> str:
    """The ``nft -f`` text: replaces the table atomically (create, delete, re-create in one
    transaction), so applying it twice leaves exactly one copy."""
    port = _check_port(container_port)
    target = f"{ADDRESS}:{port}"
    dnat = "\n".join(
        f'\t\tiifname "{name}" ip daddr {ADDRESS} tcp dport {ECS_PORT} dnat ip to {target}'
        for name in BRIDGE_PATTERNS
    )
    allowed = "\n".join(
        f'\t\tip daddr {ADDRESS} iifname "{name}" return' for name in ("lo", *BRIDGE_PATTERNS)
    )
    return (
        f"# rolebroker: {ADDRESS}:{ECS_PORT} for local containers -> the daemon on {target}\n"
        f"table {TABLE_FAMILY} {TABLE}\n"
        f"delete table {TABLE_FAMILY} {TABLE}\n"
        f"table {TABLE_FAMILY} {TABLE} {{\n"
        "\tchain prerouting {\n"
        f"\t\ttype nat hook prerouting priority {NAT_PRIORITY}; policy accept;\n"
        f"{dnat}\n"
        "\t}\n"
        "\tchain output {\n"
        f"\t\ttype nat hook output priority {NAT_PRIORITY}; policy accept;\n"
        f"\t\tip daddr {ADDRESS} tcp dport {ECS_PORT} dnat ip to {target}\n"
        "\t}\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter - 10; policy accept;\n"
        f"{allowed}\n"
        f"\t\tip daddr {ADDRESS} drop\n"
        "\t}\n"
        "}\n"
    )


def systemd_unit(link_kind: LinkKind = "dummy") -> str:
    """Re-applies the address and the ruleset at boot; stopping it removes both. Bare
    command names: systemd (>= 239) resolves them on its own fixed search path."""
    return (
        "[Unit]\n"
        f"Description=rolebroker: {ADDRESS} for local containers (address and nftables rules)\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=-ip link add {INTERFACE} type {link_kind}\n"
        f"ExecStart=ip addr replace {ADDRESS}/32 dev {INTERFACE} scope host\n"
        f"ExecStart=ip link set {INTERFACE} up\n"
        f"ExecStart=nft -f {RULESET_PATH}\n"
        f"ExecStop=-nft delete table {TABLE_FAMILY} {TABLE}\n"
        f"ExecStop=-ip link del {INTERFACE}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


EXISTS = ("File exists",)
GONE = ("Cannot find device", "No such file or directory", "does not exist")


def _network_setup(port: int, link_kind: LinkKind) -> list[Step]:
    return [
        Step(
            "the interface that holds the address",
            ("ip", "link", "add", INTERFACE, "type", link_kind),
            None,
            EXISTS,
        ),
        Step(
            "the ECS address, host scope so it is never picked as a source address",
            ("ip", "addr", "replace", f"{ADDRESS}/32", "dev", INTERFACE, "scope", "host"),
        ),
        Step("bring the interface up", ("ip", "link", "set", INTERFACE, "up")),
        Step(
            "DNAT container port 80 to the daemon; drop the address for anyone else",
            ("nft", "-f", "-"),
            ruleset(port),
        ),
    ]


def _network_teardown() -> list[Step]:
    return [
        Step("remove the rules", ("nft", "delete", "table", TABLE_FAMILY, TABLE), None, GONE),
        Step("remove the interface and its address", ("ip", "link", "del", INTERFACE), None, GONE),
    ]


def setup_plan(
    container_port: int = DEFAULT_CONTAINER_PORT, *, link_kind: LinkKind = "dummy", persist: bool = True
) -> Plan:
    """Everything ``containers setup`` does. ``persist=False`` leaves out the files and the
    systemd unit (the network part alone, as the tests apply it in a private namespace)."""
    port = _check_port(container_port)
    steps = _network_setup(port, link_kind)
    if persist:
        steps += [
            Step("a directory for the ruleset", ("mkdir", "-p", str(RULESET_PATH.parent))),
            Step("the ruleset the unit applies at boot", ("tee", str(RULESET_PATH)), ruleset(port)),
            Step(
                "the unit that re-applies everything at boot",
                ("tee", str(UNIT_PATH)),
                systemd_unit(link_kind),
            ),
            Step("make systemd read the unit", ("systemctl", "daemon-reload")),
            Step("start it at boot", ("systemctl", "enable", UNIT_NAME)),
        ]
    return Plan("setup", port, link_kind, tuple(steps))


def teardown_plan(
    container_port: int = DEFAULT_CONTAINER_PORT, *, link_kind: LinkKind = "dummy", persist: bool = True
) -> Plan:
    """Everything ``containers teardown`` does; each step is harmless when nothing is there."""
    steps: list[Step] = []
    if persist:
        steps += [
            Step("no longer start it at boot", ("systemctl", "disable", UNIT_NAME), None, GONE),
            Step("remove the unit and the ruleset file", ("rm", "-f", str(UNIT_PATH), str(RULESET_PATH))),
            Step("make systemd forget the unit", ("systemctl", "daemon-reload")),
        ]
    steps += _network_teardown()
    return Plan("teardown", _check_port(container_port), link_kind, tuple(steps))


def render_steps(title: str, steps: Sequence[Step], *, sudo: bool, already: str) -> str:
    """Root steps as a shell script a user can read, or copy and run (containers and port80)."""
    prefix = "sudo " if sudo else ""
    lines = [f"# {title}"]
    for step in steps:
        lines.append(f"# {step.why}")
        command = prefix + shlex.join(step.argv)
        if step.done_if:
            command += f"  # fine if it is already {already}"
        if step.stdin is None:
            lines.append(command)
        else:
            if step.argv[0] == "tee":
                command += " >/dev/null"
            lines.append(f"{command} <<'EOF'\n{step.stdin.rstrip(chr(10))}\nEOF")
    return "\n".join(lines) + "\n"


def render(plan: Plan, *, sudo: bool = False) -> str:
    """The plan as a shell script a user can read, or copy and run."""
    title = f"rolebroker containers {plan.action} (container port {plan.container_port})"
    return render_steps(title, plan.steps, sudo=sudo, already="there" if plan.action == "setup" else "gone")


@dataclass(frozen=True, slots=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], str | None], Outcome]


def subprocess_runner(argv: Sequence[str], stdin: str | None) -> Outcome:
    """Runs a command, through ``sudo`` when not root (sudo may prompt on the terminal)."""
    full = list(argv) if os.geteuid() == 0 else ["sudo", "--", *argv]
    try:
        done = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return Outcome(127, "", f"{full[0]}: command not found")
    return Outcome(done.returncode, done.stdout, done.stderr)


def run_steps(
    steps: Sequence[Step],
    runner: Runner,
    *,
    already: str,
    failed: Callable[[Step, Outcome, str], Exception],
) -> list[str]:
    """Runs root steps in order, one report line each; a step whose stderr says its effect is
    already ``already`` (there, gone) counts as done. Stops at the first failure with
    ``failed(step, outcome, detail)``: earlier steps stay applied, and every step is safe to
    repeat. Shared by the container set-up and port80."""
    report: list[str] = []
    for step in steps:
        outcome = runner(step.argv, step.stdin)
        if outcome.returncode == 0:
            report.append(f"done: {step.why}")
        elif any(fragment in outcome.stderr for fragment in step.done_if):
            report.append(f"already {already}: {step.why}")
        else:
            detail = " ".join(outcome.stderr.split())[:300] or f"exit status {outcome.returncode}"
            raise failed(step, outcome, detail)
    return report


def apply(plan: Plan, runner: Runner = subprocess_runner) -> list[str]:
    """Runs every step in order and returns one line per step. Stops at the first failure
    with a :class:`ContainerSetupError` naming the command (earlier steps stay applied:
    running the same plan again, or the teardown, is always safe)."""

    def failed(step: Step, outcome: Outcome, detail: str) -> Exception:
        hint = (
            " This kernel has no dummy interface driver: run `rolebroker containers setup "
            "--link-kind bridge --apply` (a bridge without ports holds the address as well)."
            if "Unknown device type" in outcome.stderr and "dummy" in step.argv
            else ""
        )
        return ContainerSetupError(
            f"'{shlex.join(step.argv)}' failed ({detail}).{hint} Fix the cause and run the same "
            f"command again: every step is safe to repeat. `rolebroker containers {plan.action}` "
            "without --apply prints the commands."
        )

    return run_steps(plan.steps, runner, already="there" if plan.action == "setup" else "gone", failed=failed)


SETUP_FIX = "rolebroker containers setup --apply"
PROBE_COMMAND = "rolebroker doctor --containers --probe"
"""Runs the root part of the doctor (the rules, a throwaway container) through sudo."""


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def _address_finding(ip: Outcome) -> Finding:
    try:
        links = json.loads(ip.stdout) if ip.returncode == 0 and ip.stdout.strip() else []
    except json.JSONDecodeError:
        links = []
    if not links:
        return Finding(Level.PROBLEM, f"interface {INTERFACE} is missing", _WHY_ADDRESS, SETUP_FIX)
    addresses = {info.get("local") for link in links for info in link.get("addr_info", [])}
    if ADDRESS not in addresses:
        fix = f"sudo ip addr replace {ADDRESS}/32 dev {INTERFACE} scope host"
        return Finding(Level.PROBLEM, f"{INTERFACE} does not hold {ADDRESS}", _WHY_ADDRESS, fix)
    if not any("UP" in link.get("flags", []) for link in links):
        return Finding(
            Level.PROBLEM, f"{INTERFACE} is down", _WHY_ADDRESS, f"sudo ip link set {INTERFACE} up"
        )
    return Finding(Level.OK, f"{INTERFACE} holds {ADDRESS} and is up")


_WHY_ADDRESS = f"the daemon's container listener binds {ADDRESS}, so the address must exist"
_WHY_RULES = (
    f"without them containers cannot use {ADDRESS}:{ECS_PORT}, or LAN neighbours can reach the address"
)


def _rules_finding(nft: Outcome, container_port: int) -> Finding:
    table = f"nftables table {TABLE_FAMILY} {TABLE}"
    if nft.returncode != 0:
        if "Operation not permitted" in nft.stderr or "Permission denied" in nft.stderr:
            return Finding(
                Level.NOTE,
                f"cannot read {table} without root",
                "listing nftables rules needs root",
                f"{PROBE_COMMAND}   # reads them as root, through sudo",
            )
        return Finding(Level.PROBLEM, f"{table} is missing", _WHY_RULES, SETUP_FIX)
    try:
        items = list(walk(json.loads(nft.stdout or "{}")))
    except json.JSONDecodeError:
        items = []
    chains = {item["chain"]["name"] for item in items if isinstance(item.get("chain"), dict)}
    ports = {item["dnat"].get("port") for item in items if isinstance(item.get("dnat"), dict)}
    drops = any("drop" in item for item in items)
    if not {"prerouting", "input"} <= chains or not drops:
        return Finding(Level.PROBLEM, f"{table} lacks its DNAT or its drop rule", _WHY_RULES, SETUP_FIX)
    if ports != {container_port}:
        found = ", ".join(str(p) for p in sorted(p for p in ports if isinstance(p, int))) or "nothing"
        what = f"{table} forwards port {ECS_PORT} to {found}, not to the container port {container_port}"
        return Finding(Level.PROBLEM, what, "containers would reach the wrong port", SETUP_FIX)
    return Finding(
        Level.OK, f"{table} forwards {ADDRESS}:{ECS_PORT} from container bridges to port {container_port}"
    )


def plain_runner(argv: Sequence[str], stdin: str | None) -> Outcome:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=10, check=False
        )
    except FileNotFoundError:
        return Outcome(127, "", f"{argv[0]}: command not found")
    return Outcome(done.returncode, done.stdout, done.stderr)


def check(
    container_port: int = DEFAULT_CONTAINER_PORT, runner: Runner = plain_runner, unit_path: Path = UNIT_PATH
) -> list[Finding]:
    """What ``doctor --containers`` reports: the address, the rules, the boot unit, each
    problem with its exact fix. Only reads; never goes through sudo."""
    findings = [
        _address_finding(runner(("ip", "-j", "addr", "show", "dev", INTERFACE), None)),
        _rules_finding(runner(("nft", "-j", "list", "table", TABLE_FAMILY, TABLE), None), container_port),
    ]
    if unit_path.exists():
        findings.append(Finding(Level.OK, f"{unit_path} re-applies the set-up at boot"))
    else:
        findings.append(
            Finding(
                Level.PROBLEM,
                f"{unit_path} is missing",
                "the address and rules are lost at reboot",
                SETUP_FIX,
            )
        )
    return findings
