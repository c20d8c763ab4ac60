"""``rolebroker doctor --containers``: the whole path a container's request takes.

In the order a user fixes things: the set-up (address, rules, boot unit:
containers_setup.check), the daemon's container listener, a request from this machine (as a
host-network container sends it: through the output DNAT rule, no root needed) and, with
``--probe``, a request from a throwaway container (containers_probe.py; as root, or through
sudo as the one explicit consent, like ``containers setup --apply``). Each problem names its
exact fix.

The listener check needs no new daemon route: the daemon's pid comes from ``/status`` (sent
only to a listener that proved it knows the token, cli/client.py) and the kernel's socket
table says which processes hold 169.254.170.2:PORT. A match is the daemon's own listener;
another user's socket there is a squatter, whatever it answers.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebroker import procfs
from rolebroker.cli import containers_probe as probe
from rolebroker.cli import containers_setup as setup
from rolebroker.cli.client import (
    ClientError,
    DaemonClient,
    DaemonUnreachable,
    ListenerNotProven,
    NotRunning,
    start_hint,
)
from rolebroker.cli.doctor import Finding, Level
from rolebroker.config import Settings

HOST_WHERE = "from this machine (as a host-network container)"
RESTART = "systemctl --user restart rolebroker (or stop and re-run rolebroker serve)"


@dataclass(frozen=True, slots=True)
class DaemonView:
    """What the loopback endpoint said about the daemon: its pid, or why it is unknown."""

    pid: int | None
    running: bool | None
    why: str = ""


def daemon_view(settings: Settings) -> DaemonView:
    try:
        status = DaemonClient(settings).status()
    except NotRunning as exc:
        return DaemonView(None, False, exc.summary)
    except ListenerNotProven as exc:
        return DaemonView(None, None, exc.summary)
    except DaemonUnreachable as exc:
        return DaemonView(None, False, exc.summary)
    except ClientError as exc:
        return DaemonView(None, True, str(exc))
    return DaemonView(status.pid, True, "" if status.pid is not None else "its /status has no pid")


def listener_finding(
    settings: Settings, view: DaemonView, holders: Sequence[procfs.Listener], me: int | None
) -> Finding:
    """Is the daemon's container listener on, and is it the daemon's?"""
    port = settings.container_port
    where = f"{setup.ADDRESS}:{port}"
    why_off = f"the rules forward containers to {where}, so their requests are refused"
    if not holders:
        if view.running is False:
            return Finding(
                Level.PROBLEM,
                f"nothing listens on {where}: the daemon is not running ({view.why})",
                why_off,
                start_hint(settings),
            )
        daemon = f"the daemon (pid {view.pid})" if view.pid is not None else "the daemon"
        config = settings.config_file or "config.toml"
        if settings.containers == "off":
            return Finding(
                Level.PROBLEM,
                f'{daemon} does not listen on {where}: containers = "off"',
                why_off,
                f'set containers = "auto" (or "on") in {config} (or ROLEBROKER_CONTAINERS), then: {RESTART}',
            )
        if settings.containers == "on":
            why = (
                f"it binds {where} when it starts, even before the address exists; it was started with "
                "another container_port or found the port taken (its log says which)"
            )
        else:
            why = (
                f'with containers = "auto" it opens its container listener only if {setup.ADDRESS} existed '
                "when it started (before the set-up, or before the boot unit ran)"
            )
        return Finding(
            Level.PROBLEM,
            f"{daemon} does not listen on {where} (its container listener is off)",
            why,
            f"after the set-up: {RESTART}"
            + (
                '; containers = "on" in config.toml makes the order not matter'
                if settings.containers == "auto"
                else ""
            ),
        )
    shown = probe.holder_text(holders)
    if view.pid is not None and any(p.pid == view.pid for h in holders for p in h.processes):
        return Finding(
            Level.OK, f"the daemon (pid {view.pid}) listens on {where}: its container listener is on"
        )
    foreign = probe.foreign_holders(holders, me)
    if foreign:
        return Finding(
            Level.PROBLEM,
            f"another user holds {where}: {probe.holder_text(foreign)}",
            "containers would send their grants to that process (the daemon could not bind the port)",
            f"stop that process (sudo ss -ltnp 'sport = :{port}'), then: {RESTART}",
        )
    if view.pid is not None:
        return Finding(
            Level.PROBLEM,
            f"{where} is held, but not by the daemon (pid {view.pid}): {shown}",
            "containers reach that process instead of the daemon",
            f"stop it, then: {RESTART}",
        )
    return Finding(
        Level.NOTE,
        f"{where} is held by {shown}",
        f"cannot ask the daemon whether that is its listener ({view.why})",
        "run rolebroker doctor --containers as the daemon's user",
    )


# -- the user's socket unit --------------------------------------------------------------------


def socket_unit_finding(settings: Settings, runner: setup.Runner, user: str) -> Finding:
    """Does the user manager hold the container port while the daemon is stopped
    (systemd/rolebroker-containers.socket)? Without it another local user can bind the port
    between two daemon runs and catch the grant of the next container that asks."""
    where = f"{setup.ADDRESS}:{settings.container_port}"
    unit = setup.SOCKET_UNIT
    shown = runner(
        ("systemctl", "--user", "show", "-p", "LoadState", "-p", "ActiveState", "-p", "Listen", unit), None
    )
    if shown.returncode != 0:
        why = (shown.stderr.strip().splitlines() or [f"exit status {shown.returncode}"])[0]
        return Finding(
            Level.NOTE,
            f"cannot ask your user manager whether {unit} holds {where} ({why})",
            "without a systemd user manager nothing holds the port while the daemon is stopped",
            "",
        )
    state = dict(line.partition("=")[::2] for line in shown.stdout.splitlines())
    loaded, active = state.get("LoadState", "?"), state.get("ActiveState", "?")
    if loaded != "loaded" or active != "active":
        shown_state = active if loaded == "loaded" else loaded
        return Finding(
            Level.NOTE,
            f"nothing holds {where} while the daemon is stopped ({unit}: {shown_state})",
            "another local user could take the port between two daemon runs and catch a container's grant",
            f"install and enable {unit}: `rolebroker containers setup` prints the steps (as yourself)",
        )
    listening = state.get("Listen", "").split(" ", 1)[0]
    if listening != where:
        return Finding(
            Level.PROBLEM,
            f"{unit} holds {listening or 'nothing'}, but the daemon's container port is {where}",
            "the rules forward containers to the daemon's port: the held one is never used",
            f"systemctl --user edit {unit}, with ListenStream= (empty) then ListenStream={where}; "
            f"then: systemctl --user restart {unit} rolebroker.service",
        )
    linger = runner(("loginctl", "show-user", user, "-p", "Linger", "--value"), None)
    if linger.returncode == 0 and linger.stdout.strip() == "no":
        return Finding(
            Level.NOTE,
            f"{unit} holds {where} while you are logged in, not from boot or after you log out",
            "containers keep running after you log out; lingering starts your user manager at boot",
            'loginctl enable-linger "$USER"',
        )
    return Finding(Level.OK, f"{unit} holds {where} while the daemon is stopped")


# -- running the probe through sudo -----------------------------------------------------------


def probe_argv(port: int, *, as_json: bool = False) -> list[str]:
    """The root command for the probe, runnable by hand after ``sudo``: this interpreter
    (sudo's PATH may not find ``rolebroker``), ``-P`` (the current directory is not searched),
    and PYTHONPATH only for code outside the interpreter's prefix (editable or ``--user``
    installs, which root's Python would not see)."""
    import click

    import rolebroker

    paths = []
    for module in (rolebroker, click):
        where = str(Path(module.__file__ or ".").resolve().parent.parent)
        if not where.startswith(sys.prefix) and where not in paths:
            paths.append(where)
    env = ["env", f"PYTHONPATH={os.pathsep.join(paths)}"] if paths else []
    tail = ["--json"] if as_json else []
    return [*env, sys.executable, "-P", "-m", "rolebroker", "containers", "probe", "--port", str(port), *tail]


def sudo_command(port: int) -> str:
    return "sudo " + shlex.join(probe_argv(port))


@dataclass(frozen=True, slots=True)
class SudoRun:
    returncode: int
    stdout: str
    detail: str = ""


def run_through_sudo(argv: Sequence[str]) -> SudoRun:
    """sudo may prompt on the terminal: stdin and stderr stay the user's. A Ctrl-C reaches
    sudo too, which hands it to the probe: wait for its clean-up rather than kill it."""
    try:
        process = subprocess.Popen(["sudo", "--", *argv], stdout=subprocess.PIPE, text=True)
    except OSError as exc:  # not installed, or not runnable from this PATH
        return SudoRun(127, "", f"cannot run sudo: {exc.strerror}")
    try:
        out, _ = process.communicate()
    except KeyboardInterrupt:
        process.wait(30)
        raise
    return SudoRun(process.returncode, out)


def findings_to_json(findings: Sequence[Finding]) -> list[dict[str, str]]:
    return [{"level": f.level.value, "what": f.what, "why": f.why, "fix": f.fix} for f in findings]


def findings_from_json(rows: Any) -> list[Finding]:
    found = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and isinstance(row.get("what"), str):
            try:
                level = Level(row.get("level"))
            except ValueError:
                continue
            found.append(Finding(level, row["what"], str(row.get("why", "")), str(row.get("fix", ""))))
    return found


# -- the doctor section -----------------------------------------------------------------------


def _default_holders(port: int) -> list[procfs.Listener]:
    return procfs.holders_of(setup.ADDRESS, port)


def _default_host_request(timeout: float) -> probe.Reply:
    return probe.request(timeout)


@dataclass(frozen=True)
class System:
    """Everything the checks read or run, injectable for the in-process tests."""

    euid: int
    uid: int
    sudo_uid: int | None
    runner: setup.Runner = setup.plain_runner
    unit_path: Path = setup.UNIT_PATH
    daemon: Callable[[Settings], DaemonView] = daemon_view
    holders: Callable[[int], list[procfs.Listener]] = _default_holders
    host_request: Callable[[float], probe.Reply] = _default_host_request
    prober: Callable[..., probe.ProbeResult] = probe.run_probe
    sudo: Callable[[Sequence[str]], SudoRun] = run_through_sudo
    timeout: float = probe.DEFAULT_TIMEOUT
    user: str = ""
    """The login name, for loginctl."""

    @classmethod
    def real(cls, environ: Mapping[str, str]) -> System:
        raw = environ.get("SUDO_UID", "")
        import pwd

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
        return cls(os.geteuid(), os.getuid(), int(raw) if raw.isdigit() else None, user=user)

    @property
    def me(self) -> int | None:
        """Whose daemon this is about: the user, or the user who ran sudo; None for a root
        shell (then no holder is called a squatter)."""
        if self.euid != 0:
            return self.uid
        return self.sudo_uid


def root_findings(
    port: int, system: System, checked: tuple[Finding, Finding] | None = None
) -> tuple[Finding, probe.ProbeResult]:
    """What only root can see: the rules and the probe (``containers probe``); ``checked``:
    the address and rules findings when they were just read."""
    address, rules = checked or tuple(setup.check(port, system.runner, system.unit_path)[:2])
    result = system.prober(
        port,
        rules=rules,
        address_ok=address.level is Level.OK,
        runner=system.runner,
        timeout=system.timeout,
        me=system.me,
    )
    return rules, result


def diagnose(settings: Settings, *, run_probe: bool, system: System) -> list[Finding]:
    port = settings.container_port
    address, rules, unit = setup.check(port, system.runner, system.unit_path)
    holders = system.holders(port)
    listener = listener_finding(settings, system.daemon(settings), holders, system.me)
    findings = [address, rules, unit, listener]
    if system.euid != 0:  # root's user manager is not the daemon's
        findings.append(socket_unit_finding(settings, system.runner, system.user))
    if address.level is Level.OK:
        reply = system.host_request(system.timeout)
        findings.append(
            probe.verdict(reply, where=HOST_WHERE, port=port, rules=rules, listener_off=not holders)
        )
    if not run_probe:
        fix = "rolebroker doctor --containers --probe"
        if system.euid != 0:
            fix += f"   # through sudo, which runs: {sudo_command(port)}"
        findings.append(
            Finding(
                Level.NOTE,
                "not probed from a container's network (it needs root for a throwaway bridge and network "
                "namespace, removed afterwards)",
                "",
                fix,
            )
        )
        return findings
    if system.euid == 0:
        findings[1], probed = root_findings(port, system, (address, rules))
        return findings + probed.findings
    run = system.sudo(probe_argv(port, as_json=True))
    try:
        body = json.loads(run.stdout)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        detail = run.detail or f"exit status {run.returncode}"
        findings.append(
            Finding(
                Level.PROBLEM,
                f"the probe did not run through sudo ({detail})",
                "",
                f"run it as root: {sudo_command(port)}",
            )
        )
        return findings
    root_rules = findings_from_json([body.get("rules")])
    if root_rules:
        findings[1] = root_rules[0]
    return findings + findings_from_json(body.get("probe"))
