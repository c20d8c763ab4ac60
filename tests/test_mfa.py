"""MFA out of band: a locked profile fails fast, ``rolebroker mfa`` (a real CLI process)
hands one code to the real daemon, one GetSessionToken unlocks every profile sharing the
device and keys, and roles keep refreshing from that session without a new code.
STS is moto behind the counting proxy; no test waits on a terminal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import pty
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from rolebroker.cache import CredentialCache
from rolebroker.config import Settings
from rolebroker.credentials import Credentials
from rolebroker.errors import InvalidMfaCode, MfaRequired, ProfileConfigError
from rolebroker.hops import Attempts, MfaSessionHop, RoleHop, SourceHop, chain_of
from rolebroker.livesettings import LiveSettings
from rolebroker.mfa import MfaWatcher
from rolebroker.mfahook import MfaProcessError, run_mfa_process
from rolebroker.refresher import Refresher
from rolebroker.server import code_from_body
from rolebroker.timing import RefreshTiming
from tests.conftest import StartDaemon
from tests.support.awsconfig import AwsFiles
from tests.support.cli import invoke_cli
from tests.support.clock import FakeClock
from tests.support.daemon import CHAIN_CREDENTIALS, AwsHome, Daemon
from tests.support.stsproxy import StsProxy
from tests.support.waiting import wait_until

SERIAL = "arn:aws:iam::000000000000:mfa/alice"
MOTO_SESSION_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
"""What moto's GetSessionToken issues: the MFA session's secret, never served or logged."""

# The keys of `base` need MFA; dev and prod are roles straight from it, admin is chained.
MFA_CONFIG = f"""\
[default]
region = us-east-1

[profile base]
region = us-east-1
mfa_serial = {SERIAL}

[profile dev]
role_arn = arn:aws:iam::111111111111:role/dev
source_profile = base
duration_seconds = 7200
region = us-east-1

[profile prod]
role_arn = arn:aws:iam::222222222222:role/prod
source_profile = base
external_id = prod-external-id
region = us-east-1

[profile dev-admin]
role_arn = arn:aws:iam::333333333333:role/admin
source_profile = dev
duration_seconds = 7200
region = us-east-1

[profile other]
region = us-east-1
"""

OTHER_CREDENTIALS = (
    CHAIN_CREDENTIALS + "[other]\naws_access_key_id = AKIAOTHERNOMFA000001\n"
    "aws_secret_access_key = otherSecretWithoutMfa00000000000000000000\n"
)


def mfa_cli(daemon: Daemon, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``rolebroker mfa`` in process (CliRunner) finding the daemon like a user's shell does;
    mfa_cli_on_a_terminal below is the real-process run."""
    return invoke_cli(
        "mfa", *args, env={**daemon.home.env(), "ROLEBROKER_PORT": str(daemon.port)}, stdin=stdin
    )


def mfa_cli_on_a_terminal(daemon: Daemon, profile: str, typed: str) -> subprocess.CompletedProcess[str]:
    """``rolebroker mfa PROFILE`` with a pseudo-terminal as stdin: it prompts, the test types."""
    env = {**daemon.home.env(), "ROLEBROKER_PORT": str(daemon.port)}
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rolebroker", "mfa", profile],
            env=env,
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(terminal)
        terminal = -1
        os.write(controller, typed.encode() + b"\n")
        try:
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def timed_get(daemon: Daemon, path: str) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = daemon.get(path)
    return response, time.monotonic() - began


def profile_status(daemon: Daemon, name: str) -> dict[str, object]:
    rows = {row["name"]: row for row in daemon.get("/status").json()["profiles"]}
    return rows[name]  # type: ignore[no-any-return]


@pytest.fixture
def mfa_home(aws_home: AwsHome) -> AwsHome:
    aws_home.write(MFA_CONFIG, OTHER_CREDENTIALS)
    return aws_home


# -- end to end: the real daemon, the real CLI, moto ------------------------------------------


def test_locked_profile_fails_fast_with_the_command_to_run(
    mfa_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy
) -> None:
    daemon = start_daemon()
    response, elapsed = timed_get(daemon, "/creds/dev")
    assert elapsed < 1.0
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == "MfaRequired"
    assert body["message"].endswith("run: rolebroker mfa dev")
    assert SERIAL in body["message"]

    # An SDK's retries, and another profile behind the same device, are as fast.
    for profile in ("dev", "prod", "dev-admin", "prod"):
        response, elapsed = timed_get(daemon, f"/creds/{profile}")
        assert (response.status_code, response.json()["code"]) == (403, "MfaRequired")
        assert response.json()["message"].endswith(f"run: rolebroker mfa {profile}")
        assert elapsed < 1.0
    assert sts.count() == 0

    dev = profile_status(daemon, "dev")
    assert (dev["state"], dev["mfa_state"], dev["mfa_serial"]) == ("mfa_required", "required", SERIAL)
    wait_until(lambda: "waiting for an MFA code serial=" + SERIAL in daemon.output(), 5)

    # The refresher keeps the profiles warm but does not spin on them, nor log every second
    # (the backoff itself: test_refresher_waits_out_a_locked_mfa_session_instead_of_spinning).
    time.sleep(1.5)
    output = daemon.output()
    assert output.count("code=MfaRequired") <= 1, daemon.safe_output()
    assert output.count("waiting for an MFA code") == 1
    assert sts.count() == 0


def test_one_code_unlocks_every_profile_of_the_device_and_roles_refresh_without_a_new_code(
    mfa_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy
) -> None:
    code = "918273"
    daemon = start_daemon("--refresh-before", "3600")
    daemon.served_secrets.update({code, MOTO_SESSION_SECRET})
    assert daemon.get("/creds/dev").status_code == 403

    result = mfa_cli(daemon, "dev", code)
    assert result.returncode == 0, result.stderr
    assert code not in result.stdout + result.stderr
    assert "unlocked: base, dev, dev-admin, prod" in result.stdout
    sessions = sts.calls("GetSessionToken")
    assert len(sessions) == 1
    assert sessions[0].params["SerialNumber"] == SERIAL
    assert sessions[0].params["TokenCode"] == code
    assert sessions[0].params["DurationSeconds"] == "43200"  # 12 h unless configured
    # dev waited for the code: the refresher warms it as soon as the session lands.
    wait_until(lambda: sts.count("AssumeRole") == 1, 5, "dev was not warmed after the unlock")
    assert sts.calls("AssumeRole")[0].params["RoleArn"] == "arn:aws:iam::111111111111:role/dev"

    sts.set(expires_in=10)  # roles from now on live 10 s: refreshed at half life
    first = {p: daemon.get(f"/creds/{p}") for p in ("dev", "prod")}
    assert [r.status_code for r in first.values()] == [200, 200]
    assumed = sts.calls("AssumeRole")
    assert [c.params["RoleArn"] for c in assumed] == [
        "arn:aws:iam::111111111111:role/dev",
        "arn:aws:iam::222222222222:role/prod",
    ]
    assert all("SerialNumber" not in c.params and "TokenCode" not in c.params for c in assumed)
    assert assumed[1].params["ExternalId"] == "prod-external-id"

    # prod, first fetched after the change, lives 10 s; dev (warm, 2 h) is not renewed yet.
    wait_until(lambda: sts.count("AssumeRole") >= 3, 12, "prod was not refreshed in the background")
    assert sts.count("GetSessionToken") == 1
    assert sts.calls("AssumeRole")[2].params["RoleArn"] == "arn:aws:iam::222222222222:role/prod"
    wait_until(
        lambda: daemon.get("/creds/prod").json()["AccessKeyId"] != first["prod"].json()["AccessKeyId"],
        5,
        "prod was not served its new keys",
    )

    dev = profile_status(daemon, "dev")
    assert dev["state"] == "fresh"
    assert dev["mfa_state"] == "active"
    assert isinstance(dev["mfa_expires_in_seconds"], int) and dev["mfa_expires_in_seconds"] > 40000
    assert "MFA session unlocked serial=" + SERIAL in daemon.output()


def test_code_from_stdin_a_rejected_code_keeps_the_profile_waiting(
    mfa_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy
) -> None:
    daemon = start_daemon()
    wrong, right = "564738", "371904"
    daemon.served_secrets.update({wrong, right, MOTO_SESSION_SECRET})

    sts.set(mode="deny")  # STS answers AccessDenied, as it does for a wrong code
    result = mfa_cli(daemon, "prod", stdin=wrong + "\n")
    assert result.returncode == 1
    assert "MfaCodeRejected" in result.stderr
    assert "run: rolebroker mfa prod" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert sts.calls("GetSessionToken")[0].params["TokenCode"] == wrong

    response, elapsed = timed_get(daemon, "/creds/prod")
    assert (response.status_code, response.json()["code"], elapsed < 1.0) == (403, "MfaRequired", True)
    assert profile_status(daemon, "prod")["state"] == "mfa_required"

    sts.set(mode="ok")
    result = mfa_cli(daemon, "prod", stdin=right + "\n")
    assert result.returncode == 0, result.stderr
    assert [c.params["TokenCode"] for c in sts.calls("GetSessionToken")] == [wrong, right]
    assert daemon.get("/creds/prod").status_code == 200
    assert daemon.get("/creds/dev").status_code == 200  # same device, same keys
    assert sts.count("GetSessionToken") == 2


def test_chained_roles_after_the_mfa_session_respect_the_one_hour_cap(
    aws_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy
) -> None:
    aws_home.write(
        MFA_CONFIG.replace(f"mfa_serial = {SERIAL}", f"mfa_serial = {SERIAL}\nmfa_session_duration = 7200"),
        OTHER_CREDENTIALS,
    )
    daemon = start_daemon()
    code = "246813"
    daemon.served_secrets.update({code, MOTO_SESSION_SECRET})
    result = mfa_cli_on_a_terminal(daemon, "dev-admin", code)
    assert result.returncode == 0, result.stderr
    assert "MFA code for dev-admin: " in result.stdout
    assert [(c.params["TokenCode"], c.params["DurationSeconds"]) for c in sts.calls("GetSessionToken")] == [
        (code, "7200")
    ]
    assert daemon.get("/creds/dev-admin").status_code == 200
    durations = {c.params["RoleArn"]: c.params.get("DurationSeconds") for c in sts.calls("AssumeRole")}
    # The GetSessionToken session is not a role session: dev gets its 2 h; dev-admin is
    # chained from dev's role session, so STS allows 1 h at most.
    assert durations == {
        "arn:aws:iam::111111111111:role/dev": "7200",
        "arn:aws:iam::333333333333:role/admin": "3600",
    }


def test_mfa_endpoint_needs_the_token_and_a_six_digit_code(
    mfa_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy
) -> None:
    daemon = start_daemon()
    url = daemon.base_url + "/mfa/dev"
    auth = {"Authorization": daemon.token}

    assert httpx.post(url, json={"code": "123456"}).status_code == 401
    assert httpx.post(url, json={"code": "123456"}, headers={"Authorization": "x" * 43}).status_code == 403
    for body in (b'{"code": "12345"}', b'{"code": "12345a"}', b'{"code": 123456}', b"123456", b"{"):
        response = httpx.post(url, content=body, headers={**auth, "Content-Type": "application/json"})
        assert (response.status_code, response.json()["code"]) == (400, "InvalidMfaCode")
        assert "12345" not in response.text.replace("123456", "")  # the body is not echoed
    other = httpx.post(daemon.base_url + "/mfa/other", json={"code": "123456"}, headers=auth)
    assert (other.status_code, other.json()["code"]) == (400, "MfaNotConfigured")
    ghost = httpx.post(daemon.base_url + "/mfa/ghost", json={"code": "123456"}, headers=auth)
    assert (ghost.status_code, ghost.json()["code"]) == (404, "ProfileNotFound")
    assert httpx.get(url, headers=auth).status_code == 405

    cli = mfa_cli(daemon, "dev", "12ab56")
    assert cli.returncode == 2 and "6 digits" in cli.stderr
    assert sts.count() == 0


def test_expiring_mfa_session_is_announced_ahead_with_a_desktop_notification(
    mfa_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy, tmp_path: Path
) -> None:
    bin_dir, notes = tmp_path / "bin", tmp_path / "notifications.txt"
    bin_dir.mkdir()
    fake = bin_dir / "notify-send"
    fake.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" >> {shlex.quote(str(notes))}\necho >> {notes}\n")
    fake.chmod(0o755)
    code = "192837"
    daemon = start_daemon("--refresh-before", "3600", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    daemon.served_secrets.update({code, MOTO_SESSION_SECRET})

    assert daemon.get("/creds/prod").status_code == 403
    wait_until(lambda: notes.exists() and "MFA code needed" in notes.read_text(), 5)

    # The e2e smoke (real notify-send, real /status); the whole 12 h life of a session, its
    # end included: test_app.py::test_watcher_announces_once_warns_ahead_once_and_waits_again_after_expiry.
    sts.set(expires_in=10)  # the MFA session lives 10 s: warned at half life
    assert mfa_cli(daemon, "prod", code).returncode == 0
    assert daemon.get("/creds/prod").status_code == 200
    assert profile_status(daemon, "prod")["mfa_state"] == "active"

    wait_until(lambda: profile_status(daemon, "prod")["mfa_state"] == "expiring", 10)
    wait_until(lambda: "MFA session expiring" in notes.read_text(), 5)
    assert f"MFA session serial={SERIAL} expires at" in daemon.output()
    assert "run: rolebroker mfa prod" in notes.read_text()
    assert not daemon.leaked(notes.read_text())
    assert sts.count("GetSessionToken") == 1


def test_mfa_process_supplies_the_code_out_of_band(
    aws_home: AwsHome, start_daemon: StartDaemon, sts: StsProxy, tmp_path: Path
) -> None:
    code, runs = "837261", tmp_path / "hook-runs"
    hook = tmp_path / "yubikey.py"
    hook.write_text(
        "import time\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        "time.sleep(1.5)\n"
        "print('Touch your key...')\n"
        f"print({code!r})\n"
    )
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(hook))}"
    aws_home.write(
        MFA_CONFIG.replace(f"mfa_serial = {SERIAL}", f"mfa_serial = {SERIAL}\nmfa_process = {command}"),
        OTHER_CREDENTIALS,
    )
    daemon = start_daemon()
    daemon.served_secrets.update({code, MOTO_SESSION_SECRET})

    response, elapsed = timed_get(daemon, "/creds/dev")
    assert elapsed < 1.0  # the hook runs, the request does not wait for it
    assert (response.status_code, response.json()["code"]) == (403, "MfaRequired")
    assert "mfa_process" in response.json()["message"]

    wait_until(lambda: daemon.get("/creds/dev").status_code == 200, 15)
    sessions = sts.calls("GetSessionToken")
    assert [(c.params["SerialNumber"], c.params["TokenCode"]) for c in sessions] == [(SERIAL, code)]
    assert daemon.get("/creds/prod").status_code == 200
    assert runs.read_text() == "run\n"
    assert profile_status(daemon, "dev")["mfa_state"] == "active"


def test_stopping_the_daemon_kills_a_hook_that_waits_for_a_key_touch(
    aws_home: AwsHome, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    pid_file = tmp_path / "hook.pid"
    hook = tmp_path / "untouched.py"
    hook.write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(hook))}"
    aws_home.write(
        MFA_CONFIG.replace(f"mfa_serial = {SERIAL}", f"mfa_serial = {SERIAL}\nmfa_process = {command}"),
        OTHER_CREDENTIALS,
    )
    daemon = start_daemon()
    assert daemon.get("/creds/dev").status_code == 403
    wait_until(lambda: pid_file.exists() and pid_file.read_text().isdigit(), 10)
    assert profile_status(daemon, "dev")["mfa_process_running"] is True
    hook_pid = int(pid_file.read_text())

    began = time.monotonic()
    daemon.stop()
    assert time.monotonic() - began < 8
    wait_until(lambda: not _alive(hook_pid), 5, "the mfa_process outlived the daemon")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (reaped by its parent or init soon).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


# -- one module at a time ---------------------------------------------------------------------


def test_mfa_session_sits_between_the_keys_and_the_first_role(aws_files: AwsFiles) -> None:
    catalog = aws_files.write(MFA_CONFIG, OTHER_CREDENTIALS)
    hops = chain_of(catalog.hop("dev-admin"))
    assert [type(h) for h in hops] == [SourceHop, MfaSessionHop, RoleHop, RoleHop]
    mfa = hops[1]
    assert isinstance(mfa, MfaSessionHop) and mfa.mfa_serial == SERIAL and mfa.duration_seconds == 43200
    # One session for every profile with the same keys and device, the role-less one included.
    keys = {chain_of(catalog.hop(p))[1].key for p in ("dev", "prod", "dev-admin")}
    assert keys == {mfa.key} and catalog.hop("base").key == mfa.key
    assert [type(h) for h in chain_of(catalog.hop("other"))][-1].__name__ == "SessionTokenHop"


def test_mfa_serial_on_role_profiles_aws_cli_style(aws_files: AwsFiles) -> None:
    config = MFA_CONFIG.replace(f"mfa_serial = {SERIAL}\n", "").replace(
        "source_profile = base\n", f"source_profile = base\nmfa_serial = {SERIAL}\n"
    )
    catalog = aws_files.write(config, OTHER_CREDENTIALS)
    assert chain_of(catalog.hop("dev"))[1].key == chain_of(catalog.hop("prod"))[1].key
    assert isinstance(chain_of(catalog.hop("dev-admin"))[1], MfaSessionHop)  # set on a profile of its chain
    assert not any(isinstance(h, MfaSessionHop) for h in chain_of(catalog.hop("base")))


def test_two_devices_in_one_chain_is_a_profile_error(aws_files: AwsFiles) -> None:
    config = MFA_CONFIG.replace(
        "duration_seconds = 7200\nregion",
        "duration_seconds = 7200\nmfa_serial = arn:aws:iam::1:mfa/bob\nregion",
        1,
    )
    catalog = aws_files.write(config, OTHER_CREDENTIALS)
    with pytest.raises(ProfileConfigError) as info:
        catalog.hop("dev")
    assert (info.value.code, info.value.status) == ("ConflictingMfaSerial", 400)
    assert isinstance(chain_of(catalog.hop("prod"))[1], MfaSessionHop)


def test_mfa_session_without_a_code_or_long_term_keys_fails_at_once() -> None:
    root = SourceHop(profile="base", fingerprint="x", static=Credentials("AKIA1", "secret"))
    hop = MfaSessionHop(profile="base", mfa_serial=SERIAL, source=root, unlock_profile="dev")
    with pytest.raises(MfaRequired, match="run: rolebroker mfa dev"):
        hop.fetch(Credentials("AKIA1", "secret"))
    with pytest.raises(ProfileConfigError) as info:
        hop.with_code("123456").fetch(Credentials("ASIA1", "secret", "token", time.time() + 900))
    assert info.value.code == "MfaNeedsLongTermKeys"
    assert hop.with_code("123456").key == hop.key
    assert "123456" not in repr(hop.with_code("123456"))


async def test_refresher_waits_out_a_locked_mfa_session_instead_of_spinning() -> None:
    clock = FakeClock()
    cache = CredentialCache(LiveSettings.of_timing(RefreshTiming()), clock=clock, jitter=lambda: 0.5)
    root = SourceHop(profile="base", fingerprint="x", static=Credentials("AKIA1", "secret"))
    mfa = MfaSessionHop(profile="base", mfa_serial=SERIAL, source=root, unlock_profile="dev")
    roles = [
        RoleHop(profile=name, role_arn=f"arn:aws:iam::111111111111:role/{name}", source=mfa, session_name="t")
        for name in ("dev", "prod")
    ]
    refresher = Refresher(cache, lambda: roles, clock=clock)
    for _ in range(60):  # one minute of ticks
        refresher.tick()
        while any(cache.in_flight(hop) for hop in (root, mfa, *roles)):
            await asyncio.sleep(0.001)
        clock.now += 1
    # Backoff 1, 2, 4, 8, 16, 32 s: six cheap attempts in a minute, not one per role per tick.
    assert cache.stats(mfa).consecutive_failures == 6
    assert cache.stats(mfa).fetches == 0  # none of them reached STS
    last_error = cache.stats(mfa).last_error
    assert last_error is not None and last_error.code == "MfaRequired"
    assert all(cache.stats(role).fetches == 0 for role in roles)
    # Between ticks it sleeps until the session's retry time, not the next second.
    assert refresher.next_deadline() == cache.stats(mfa).retry_at > clock.now + 1


@dataclass(frozen=True)
class UnlockedSession(MfaSessionHop):
    """An MFA session that unlocks without STS: 12 h of the fake clock."""

    clock: FakeClock = field(default_factory=FakeClock, compare=False)

    def fetch_counted(self, source: Credentials | None, attempts: Attempts) -> Credentials:
        return Credentials("ASIAMFA", "secret", "token", self.clock() + 43200)


async def test_mfa_watcher_sleeps_until_the_warning_the_end_or_a_hook_retry() -> None:
    clock = FakeClock()
    cache = CredentialCache(LiveSettings.of_timing(RefreshTiming()), clock=clock, jitter=lambda: 0.5)
    session = UnlockedSession(
        profile="base", mfa_serial=SERIAL, source=None, unlock_profile="dev", clock=clock
    )
    role = RoleHop(
        profile="dev", role_arn="arn:aws:iam::111111111111:role/dev", source=session, session_name="t"
    )
    watcher = MfaWatcher(cache, lambda: [role], settings=LiveSettings(Settings()), clock=clock, notify=None)
    watcher.tick()
    assert watcher.next_deadline() == math.inf  # waiting for a code: only a wake-up helps

    await cache.renew(session)
    start = clock.now
    assert watcher.next_deadline() == start + 43200 - 3600  # the warning an hour ahead
    clock.now = start + 43200 - 3600
    watcher.tick()
    entry = cache.entry(session)
    assert entry is not None and watcher.next_deadline() == entry.servable_until  # warned: its end

    hooked = dataclasses.replace(session, mfa_process="false")
    top = dataclasses.replace(role, source=hooked)
    watcher = MfaWatcher(cache, lambda: [top], settings=LiveSettings(Settings()), clock=clock, notify=None)
    cache.forget(set())
    watcher.tick()  # runs the hook, which fails
    for _ in range(200):
        if watcher.next_deadline() < math.inf:
            break
        await asyncio.sleep(0.01)
    assert watcher.next_deadline() == clock.now + 15.0  # its retry
    await watcher.stop()


def test_mfa_code_is_scrubbed_but_the_serial_is_kept() -> None:
    serial = "arn:aws:iam::123456789012:mfa/alice"
    hop = MfaSessionHop(profile="base", mfa_serial=serial, source=None, code="123456")
    assert hop._scrub(f"{serial} rejected 123456") == f"{serial} rejected ******"


def test_code_from_body_accepts_only_six_digits() -> None:
    assert code_from_body(json.dumps({"code": "012345"}).encode()) == "012345"
    for raw in (
        b'{"code": "01234\\n"}',
        b'{"code": "\\u0661\\u0662\\u0663\\u0664\\u0665\\u0666"}',
        b"x" * 2000,
    ):
        with pytest.raises(InvalidMfaCode, match="6 digits"):
            code_from_body(raw)


def test_mfa_process_output_timeout_and_failure(tmp_path: Path) -> None:
    script = tmp_path / "hook.py"
    script.write_text("import sys\nprint('press the key')\nprint(sys.argv[1])\nsys.exit(int(sys.argv[2]))\n")
    hook = run_mfa_process
    base = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    assert hook(f"{base} 654321 0") == "654321"
    with pytest.raises(MfaProcessError, match="status 3") as failed:
        hook(f"{base} 654321 3")
    assert "654321" not in str(failed.value)
    with pytest.raises(MfaProcessError, match="not a 6-digit code") as junk:
        hook(f"{base} secret-junk 0")
    assert "secret-junk" not in str(junk.value)
    began = time.monotonic()
    with pytest.raises(MfaProcessError, match="did not finish"):
        hook(f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(30)'", timeout=0.5)
    assert time.monotonic() - began < 5
    with pytest.raises(MfaProcessError, match="cannot run"):
        hook(str(tmp_path / "missing-tool"))
