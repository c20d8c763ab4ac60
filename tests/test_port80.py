"""``rolebroker port80``: the rule text and plans in process, then the real thing in a private
network namespace: the real daemon and moto inside it, the project's own nftables rule, and
plain ``curl http://localhost/creds/prod`` from the daemon's uid and from another uid.

The namespace is held by an ``unshare --net`` child (tests/support/bridgenet.py): the host's
network is never touched, and everything dies with the test, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rolebroker.cli import port80_setup as setup
from tests.support import bridgenet
from tests.support.cli import invoke_cli
from tests.support.daemon import CHAIN_CONFIG, CHAIN_CREDENTIALS, AwsHome
from tests.support.procs import ManagedProcess

# -- in process: the text and the plans ---------------------------------------------------------


def test_ruleset_redirects_only_this_uids_loopback_port_80() -> None:
    text = setup.ruleset(1000, 9911)
    assert "table inet rolebroker-port80-1000 {" in text
    assert "type nat hook output priority -100; policy accept;" in text
    assert "meta skuid 1000 ip daddr 127.0.0.1 tcp dport 80 redirect to :9911" in text
    assert "meta skuid 1000 ip6 daddr ::1 tcp dport 80 redirect to :9911" in text
    # every rule names the uid: nobody else's traffic is touched
    rules = [line for line in text.splitlines() if "redirect" in line]
    assert len(rules) == 2 and all("meta skuid 1000 " in r for r in rules)
    # declare, delete, re-declare: applying twice replaces the table atomically
    head = text.splitlines()[1:3]
    assert head == ["table inet rolebroker-port80-1000", "delete table inet rolebroker-port80-1000"]


@pytest.mark.parametrize(("uid", "port"), [(1000, 80), (1000, 0), (1000, 70000), (-1, 9911)])
def test_bad_uid_or_port_is_refused(uid: int, port: int) -> None:
    with pytest.raises(ValueError):
        setup.ruleset(uid, port)


def test_setup_and_remove_plans() -> None:
    plan = setup.setup_plan(1000, 9911)
    argvs = [s.argv for s in plan.steps]
    assert argvs[0] == ("nft", "-f", "-")
    assert ("tee", "/etc/rolebroker/port80-1000.nft") in argvs
    assert ("systemctl", "enable", "rolebroker-port80-1000.service") in argvs
    assert [s.argv for s in setup.setup_plan(1000, 9911, persist=False).steps] == [("nft", "-f", "-")]
    unit = setup.systemd_unit(1000)
    assert "ExecStart=nft -f /etc/rolebroker/port80-1000.nft" in unit
    assert "ExecStop=-nft delete table inet rolebroker-port80-1000" in unit
    removal = setup.remove_plan(1000)
    assert removal.steps[-1].argv == ("nft", "delete", "table", "inet", "rolebroker-port80-1000")
    assert all(s.done_if for s in removal.steps if s.argv[0] == "nft")


def test_apply_reports_each_step_and_accepts_already_gone() -> None:
    ran: list[tuple[str, ...]] = []

    def runner(argv: object, stdin: str | None) -> setup.Outcome:
        ran.append(tuple(argv))  # type: ignore[arg-type]
        return setup.Outcome(1, "", "Error: No such file or directory")

    assert setup.apply(setup.remove_plan(7, persist=False), runner) == ["already gone: remove the redirect"]
    with pytest.raises(setup.Port80Error, match="nft -f -"):
        setup.apply(setup.setup_plan(7, 9911, persist=False), runner)


def test_cli_prints_the_script_and_the_config_line_without_changing_anything(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path), "SUDO_UID": ""}
    done = invoke_cli("port80", "--port", "9922", env=env)
    assert done.returncode == 0, done.stderr
    uid = os.getuid()
    assert f"meta skuid {uid} ip daddr 127.0.0.1 tcp dport 80 redirect to :9922" in done.stdout
    assert "nft -f -" in done.stdout and "systemctl enable" in done.stdout
    assert "same_user_without_token = true" in done.stderr
    assert "nothing was changed" in done.stderr
    removal = invoke_cli("port80", "--remove", env=env)
    assert f"nft delete table inet rolebroker-port80-{uid}" in removal.stdout
    assert "same_user_without_token" not in removal.stderr


def test_through_sudo_it_refuses_to_write_roots_rule() -> None:
    if os.geteuid() != 0:
        pytest.skip("the refusal is for root with SUDO_UID")
    done = invoke_cli("port80", "--port", "9922", env={"SUDO_UID": "1000"})
    assert done.returncode == 2 and "not through sudo" in done.stderr
    assert invoke_cli("port80", "--port", "9922", "--uid", "1000", env={"SUDO_UID": "1000"}).returncode == 0


# -- in a private network namespace --------------------------------------------------------------

DAEMON_PORT = 9911
MOTO_PORT = 5000
OTHER_UID = 4242


def _problem() -> str | None:
    if problem := bridgenet.namespace_problem():
        return problem
    missing = [tool for tool in ("curl", "setpriv") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}" if missing else None


@dataclass
class Rig:
    ns: bridgenet.Namespace
    home: AwsHome
    moto: ManagedProcess
    daemon: ManagedProcess | None = None

    def start_daemon(self, *, tokenless: bool) -> None:
        self.stop_daemon()
        env = {**self.home.env(f"http://127.0.0.1:{MOTO_PORT}"), "ROLEBROKER_LOG_LEVEL": "info"}
        if tokenless:
            env["ROLEBROKER_SAME_USER_WITHOUT_TOKEN"] = "true"
        argv = [sys.executable, "-m", "rolebroker", "serve", "--port", str(DAEMON_PORT)]
        self.daemon = ManagedProcess(self.ns.argv(*argv), env, cwd=self.home.root)
        self._wait(f"http://127.0.0.1:{DAEMON_PORT}/healthz", self.daemon)

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def _wait(self, url: str, process: ManagedProcess, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not process.running():
                raise RuntimeError(f"{process.argv[4:7]} exited: {process.output()[-2000:]}")
            if (
                self.ns.run("curl", "-s", "-o", "/dev/null", "--max-time", "1", url, check=False).returncode
                == 0
            ):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not answer: {process.output()[-2000:]}")

    def curl(self, url: str, *, uid: int | None = None, token: str | None = None) -> tuple[int | None, dict]:
        """Plain curl inside the namespace: (HTTP status, JSON body), or (None, {"exit": N})
        when it could not connect. Never prints what it fetched."""
        argv = ["curl", "-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", url]
        if token is not None:
            argv[1:1] = ["-H", f"Authorization: {token}"]
        if uid is not None:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        done = self.ns.run(*argv, check=False)
        if done.returncode != 0:
            return None, {"exit": done.returncode}
        body, _, status = done.stdout.rpartition("\n")
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {"raw": body[:200]}
        return int(status), parsed

    def served_secrets(self, bodies: list[dict]) -> list[str]:
        found = [b[k] for b in bodies for k in ("SecretAccessKey", "Token") if k in b]
        token_file = self.home.token_file
        if token_file.exists():
            found.append(token_file.read_text())
        return found


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    if problem := _problem():
        pytest.skip(problem)
    ns = bridgenet.Namespace.create("port80")
    home = AwsHome(tmp_path / "home")
    home.write(CHAIN_CONFIG, CHAIN_CREDENTIALS)
    moto = None
    rig = None
    try:
        exe = shutil.which("moto_server")
        argv = [exe] if exe else [sys.executable, "-m", "moto.server"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        moto = ManagedProcess(ns.argv(*argv, "-H", "127.0.0.1", "-p", str(MOTO_PORT)), env)
        rig = Rig(ns, home, moto)
        rig._wait(f"http://127.0.0.1:{MOTO_PORT}/", moto, 60)
        yield rig
    finally:
        if rig is not None:
            rig.stop_daemon()
        if moto is not None:
            moto.cleanup()
        ns.close()  # the namespace, its rules and every address in it go with its holder
        if rig is not None and rig.daemon is not None:
            rig.daemon.log_path.unlink(missing_ok=True)


def _listed(rig: Rig) -> str:
    return rig.ns.run("nft", "list", "ruleset").stdout


def test_plain_curl_localhost_reaches_only_the_users_own_daemon(rig: Rig) -> None:
    uid = os.getuid()
    url = "http://localhost/creds/prod"
    rig.start_daemon(tokenless=True)
    # before the rule: nothing on port 80
    assert rig.curl(url)[0] is None

    report = setup.apply(setup.setup_plan(uid, DAEMON_PORT, persist=False), rig.ns.runner())
    assert report == [f"done: redirect uid {uid}'s localhost:80 to port {DAEMON_PORT}"]
    setup.apply(setup.setup_plan(uid, DAEMON_PORT, persist=False), rig.ns.runner())  # idempotent
    assert _listed(rig).count(f"table inet {setup.table_name(uid)}") == 1

    bodies: list[dict] = []
    try:
        status, body = rig.curl(url)
        bodies.append(body)
        assert status == 200, body.get("code")
        assert body["RoleArn"].endswith(":role/prod") and body["AccessKeyId"]
        for host in ("127.0.0.1", "[::1]"):  # both families are redirected
            status, body = rig.curl(f"http://{host}/creds/dev")
            bodies.append(body)
            assert status == 200, (host, body.get("code"))

        # another uid: its port 80 is not redirected, so nothing answers it
        assert rig.curl(url, uid=OTHER_UID) == (None, {"exit": 7})
        # and straight to the daemon's port, with no token or the real one, it is refused by uid
        status, body = rig.curl(f"http://127.0.0.1:{DAEMON_PORT}/creds/prod", uid=OTHER_UID)
        assert (status, body.get("code")) == (403, "ForeignUser")
        status, body = rig.curl(
            f"http://127.0.0.1:{DAEMON_PORT}/creds/prod", uid=OTHER_UID, token=rig.home.token_file.read_text()
        )
        assert (status, body.get("code")) == (403, "ForeignUser")

        # the audit log names the caller behind the redirect: curl, with its pid
        records = _audit(rig)
        served = [r for r in records if r.get("outcome") == "OK" and r.get("profile") == "prod"]
        assert served and served[0].get("uid") == uid and str(served[0].get("exe", "")).endswith("curl")

        # with the setting off, tokenless requests are refused
        rig.start_daemon(tokenless=False)
        status, body = rig.curl(url)
        assert (status, body.get("code")) == (401, "MissingToken")
    finally:
        assert rig.daemon is not None
        output = rig.daemon.output()
        leaked = [s[:4] for s in rig.served_secrets(bodies) if s and s in output]
        assert not leaked, "secrets in the daemon's output"

    assert setup.apply(setup.remove_plan(uid, persist=False), rig.ns.runner()) == [
        "done: remove the redirect"
    ]
    assert setup.apply(setup.remove_plan(uid, persist=False), rig.ns.runner()) == [
        "already gone: remove the redirect"
    ]
    assert setup.table_name(uid) not in _listed(rig)
    assert rig.curl(url)[0] is None


def _audit(rig: Rig) -> list[dict]:
    path = rig.home.root / "state" / "rolebroker" / "audit.jsonl"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the writer is a background thread
        if path.exists() and path.read_text().strip():
            break
        time.sleep(0.05)
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_doctor_port80_reports_each_state(rig: Rig) -> None:
    uid = os.getuid()
    rig.start_daemon(tokenless=True)
    cli = [sys.executable, "-m", "rolebroker", "doctor", "--port80"]
    env = {**rig.home.env(), "ROLEBROKER_PORT": str(DAEMON_PORT)}

    def doctor() -> str:
        done = subprocess.run(
            rig.ns.argv(*cli), env=env, capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout + done.stderr

    assert "no redirect" in doctor()
    setup.apply(setup.setup_plan(uid, DAEMON_PORT, persist=False), rig.ns.runner())
    report = doctor()
    assert "reaches your daemon" in report and "without a token" in report
    rig.start_daemon(tokenless=False)
    assert "same_user_without_token" in doctor()
