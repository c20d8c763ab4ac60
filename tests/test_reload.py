"""SIGHUP, POST /reload (``rolebroker reload``) and SIGTERM on the real daemon: a reload
keeps the cached credentials of every profile whose definition did not change, re-assumes
the changed ones, survives a broken file, and re-reads rolebroker's own config.toml."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from rolebroker.broker import Broker
from rolebroker.cache import CacheEntry
from rolebroker.config import Settings, apply_settings
from rolebroker.credentials import Credentials
from rolebroker.errors import ConfigFileError
from rolebroker.profiles import ProfileCatalog
from rolebroker.timing import RefreshTiming
from tests.conftest import StartDaemon
from tests.support.cli import cli_env, run_cli
from tests.support.daemon import CHAIN_CONFIG, Daemon
from tests.support.stsproxy import StsProxy
from tests.support.waiting import wait_until

STAGING = "\n[profile staging]\nrole_arn = arn:aws:iam::444444444444:role/staging\nsource_profile = dev\n"

EXPIRES = 100_000.0
CREDS = Credentials("AKIDEXAMPLE", "secret", "token", expiration=EXPIRES)


def assumed(sts: StsProxy, role: str) -> list[dict[str, str]]:
    return [c.params for c in sts.calls("AssumeRole") if c.params["RoleArn"].endswith(f":role/{role}")]


def wait_for_log(daemon: Daemon, text: str, count: int = 1, timeout: float = 10.0) -> None:
    try:
        wait_until(lambda: daemon.output().count(text) >= count, timeout, f"{count} x {text!r}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc} in the daemon log:\n{daemon.safe_output()}") from None


def hup(daemon: Daemon, marker: str = "(SIGHUP)") -> None:
    before = daemon.output().count(marker)
    daemon.process.signal(signal.SIGHUP)
    wait_for_log(daemon, marker, before + 1)


def test_sighup_keeps_unchanged_profiles_and_reassumes_changed_ones(daemon: Daemon, sts: StsProxy) -> None:
    before = {p: daemon.get(f"/creds/{p}").json() for p in ("dev", "prod", "prod-admin")}
    assert sts.count("AssumeRole") == 3

    daemon.home.config_path.write_text(CHAIN_CONFIG.replace("prod-external-id", "rotated-id") + STAGING)
    hup(daemon, "reloaded 6 AWS profiles (SIGHUP)")

    after = {p: daemon.get(f"/creds/{p}").json() for p in ("dev", "prod", "prod-admin", "staging")}
    assert after["dev"]["AccessKeyId"] == before["dev"]["AccessKeyId"]  # cache kept
    assert len(assumed(sts, "dev")) == 1  # unchanged: no new AssumeRole
    assert [c["ExternalId"] for c in assumed(sts, "prod")] == [
        "prod-external-id",
        "rotated-id",
    ]  # changed: once
    assert after["prod"]["AccessKeyId"] != before["prod"]["AccessKeyId"]
    # prod-admin did not change, but it is assumed *from* prod, whose session changed.
    assert len(assumed(sts, "admin")) == 2
    assert len(assumed(sts, "staging")) == 1  # new: from the cached dev, so one call
    assert after["staging"]["AccountId"] == "444444444444"


def test_sighup_with_a_broken_config_keeps_serving_then_recovers(daemon: Daemon, sts: StsProxy) -> None:
    cached = daemon.get("/creds/prod").json()
    daemon.home.config_path.write_text(CHAIN_CONFIG + "\n[profile broken\nregion\n")
    hup(daemon, "config SIGHUP failed")

    assert daemon.get("/creds/prod").json()["AccessKeyId"] == cached["AccessKeyId"]
    status = daemon.get("/status").json()
    assert status["config_error"]["code"] == "ConfigFileError"
    doctor = run_cli("doctor", env=cli_env(daemon))
    assert "the daemon cannot read the AWS config" in doctor.stdout and doctor.returncode == 1

    daemon.home.config_path.write_text(CHAIN_CONFIG + STAGING)
    hup(daemon)
    assert daemon.get("/status").json()["config_error"] is None
    assert daemon.get("/creds/staging").status_code == 200
    assert sts.count("AssumeRole") == 3  # dev and prod from before the breakage, staging now


def test_rolebroker_reload_picks_up_a_new_profile_and_reports_a_broken_file(daemon: Daemon) -> None:
    daemon.get("/creds/dev")
    daemon.home.config_path.write_text(CHAIN_CONFIG + STAGING)
    result = run_cli("reload", env=cli_env(daemon))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "rolebroker reloaded: 6 profiles"
    names = [p["name"] for p in daemon.get("/status").json()["profiles"]]
    assert "staging" in names

    daemon.home.config_path.write_text("[profile broken\n")
    failed = run_cli("reload", env=cli_env(daemon))
    assert failed.returncode == 1
    assert "ConfigFileError" in failed.stderr and "fix the file" in failed.stderr


def settings_file(daemon: Daemon) -> Path:
    path = daemon.home.root / "config" / "rolebroker" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_sighup_rereads_rolebroker_settings_but_flags_keep_winning(start_daemon: StartDaemon) -> None:
    daemon = start_daemon("--refresh-before", "1300")
    settings_file(daemon).write_text(
        "refresh_before = 1500\nrequest_timeout = 7\nkeep_warm = 100\n"
        'log_level = "warning"\ntoken_file = "/tmp/elsewhere"\n'
    )
    hup(daemon, "settings SIGHUP: keep_warm=100.0, request_timeout=7.0, log_level=warning")
    assert "token_file changed to /tmp/elsewhere; restart rolebroker to apply it" in daemon.output()
    assert daemon.get("/status").json()["refresh_before_seconds"] == 1300  # the flag wins
    assert daemon.get("/creds/dev").status_code == 200  # same token file, same port
    assert "refreshed profile=dev" not in daemon.output()  # info lines are off now

    settings_file(daemon).write_text("keep_warm = -1\n")
    hup(daemon, "settings SIGHUP failed")
    status = daemon.get("/status").json()
    assert "keep_warm" in status["settings_error"]
    assert status["settings_error"] is not None


def test_apply_settings_only_changes_what_the_file_may_change() -> None:
    start = Settings(port=9911, refresh_before=1200.0, log_level="info")
    flagged = Settings(port=9911, refresh_before=1200.0, log_level="debug")  # serve --log-level debug
    fresh = Settings(port=9000, refresh_before=1800.0, log_level="warning", keep_warm=60.0)
    updated, restart = apply_settings(flagged, start, fresh)
    assert (updated.refresh_before, updated.keep_warm, updated.log_level) == (1800.0, 60.0, "debug")
    assert updated.port == 9911
    assert restart == ["port"]


def test_sigterm_finishes_in_flight_requests_then_exits(daemon: Daemon, sts: StsProxy) -> None:
    sts.set(delay=1.0)
    results: list[int] = []

    def cold_request() -> None:
        results.append(daemon.get("/creds/dev", timeout=20).status_code)

    thread = threading.Thread(target=cold_request)
    thread.start()
    deadline = time.monotonic() + 10
    while not sts.count("AssumeRole") and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    daemon.process.signal(signal.SIGTERM)
    returncode = daemon.process.proc.wait(15)
    thread.join(20)
    assert results == [200]  # the request in flight was answered
    assert returncode in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 8
    assert "Traceback" not in daemon.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{daemon.base_url}/healthz", timeout=1)


async def test_a_reload_replaces_the_live_settings_that_cache_and_mfa_watcher_read(tmp_path: Path) -> None:
    """In process: one holder, replaced once, and every reader sees the new value."""
    token = tmp_path / "token"
    changed = Settings(token_file=token, refresh_before=600.0, request_timeout=2.0)
    reads = [Settings(token_file=token), changed]

    def no_config() -> ProfileCatalog:
        raise ConfigFileError("no AWS config in this test")

    broker = Broker(Settings(token_file=token), load_catalog=no_config, reload_settings=lambda: reads.pop(0))
    await broker.reload(reason="start")  # records the baseline
    assert broker.cache.timing.refresh_before == 1200.0

    await broker.reload(reason="test")
    assert broker.settings.refresh_before == 600.0 and broker.live.settings.request_timeout == 2.0
    assert broker.cache.timing.refresh_before == 600.0
    assert broker.cache.timing.serve_floor == RefreshTiming().serve_floor  # the rest of the timing kept
    # The watcher warns an hour (or refresh_before, if longer) before an MFA session ends.
    entry = CacheEntry(CREDS, issued_at=0.0, refresh_at=0.0, servable_until=0.0)
    assert broker.mfa.warn_at(entry) == EXPIRES - 3600.0
    broker.live.replace(Settings(token_file=token, refresh_before=7200.0))
    assert broker.mfa.warn_at(entry) == EXPIRES - 7200.0
    assert broker.cache.timing.refresh_before == 7200.0
