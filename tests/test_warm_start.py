"""Profiles used before a stop are warm after the next start: the daemon remembers their
names (never credentials) in $XDG_STATE_HOME/rolebroker/warm.json."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from pathlib import Path

import pytest

from rolebroker import warmset
from rolebroker.warmset import MAX_BYTES, MAX_PROFILES, WarmFile, WarmSet
from tests.conftest import StartDaemon
from tests.support.daemon import BASE_SECRET, AwsHome
from tests.support.stsproxy import StsProxy

NOW = 1_800_000_000.0
HOUR = 3600.0


def test_the_file_is_private_holds_names_only_and_round_trips(tmp_path: Path) -> None:
    file = WarmFile(tmp_path / "state" / "rolebroker" / "warm.json")
    file.save({"prod": NOW - 10, "dev": NOW - 20})
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.path.parent.stat().st_mode) == 0o700
    assert json.loads(file.path.read_text()) == {
        "version": 1,
        "profiles": {"prod": int(NOW - 10), "dev": int(NOW - 20)},
    }
    assert file.load(now=NOW, keep_warm=HOUR) == {"prod": int(NOW - 10), "dev": int(NOW - 20)}
    assert [p.name for p in file.path.parent.iterdir()] == ["warm.json"]  # no temp file left


def test_old_and_removed_profiles_are_not_warmed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = WarmFile(tmp_path / "warm.json")
    file.save({"prod": NOW - 10, "gone": NOW - 10, "old": NOW - 2 * HOUR})
    with caplog.at_level(logging.INFO, logger="rolebroker"):
        assert file.load(now=NOW, keep_warm=HOUR, known={"prod", "old"}) == {"prod": int(NOW - 10)}
    assert "dropped gone (no longer AWS profiles)" in caplog.text


def test_the_file_is_bounded(tmp_path: Path) -> None:
    file = WarmFile(tmp_path / "warm.json")
    file.save({f"profile-{i:04d}": NOW - i for i in range(MAX_PROFILES * 4)})
    assert file.path.stat().st_size < MAX_BYTES
    kept = file.load(now=NOW, keep_warm=HOUR * 24)
    assert len(kept) == MAX_PROFILES
    assert set(kept) == {f"profile-{i:04d}" for i in range(MAX_PROFILES)}  # the newest


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"version": 2, "profiles": {}}',
        '{"version": 1, "profiles": ["prod"]}',
        b"\xff\xfe",
        '{"version": 1, "profiles": {"prod": 1}}' + " " * MAX_BYTES,
    ],
)
def test_a_bad_file_is_ignored_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | bytes
) -> None:
    path = tmp_path / "warm.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="rolebroker"):
        assert WarmFile(path).load(now=NOW, keep_warm=HOUR) == {}
    assert f"ignoring the warm-profile file {path}" in caplog.text


def test_saves_only_on_a_change_worth_writing(tmp_path: Path) -> None:
    used: dict[str, float] = {}
    writes: list[dict[str, float]] = []
    file = WarmFile(tmp_path / "warm.json")
    original = file.save

    def save(snapshot: dict[str, float]) -> None:
        writes.append(dict(snapshot))
        original(snapshot)

    file.save = save  # type: ignore[method-assign]
    warm = WarmSet(file, lambda: used, clock=lambda: NOW)

    async def scenario() -> None:
        await warm.restore(keep_warm=HOUR, known=None)
        await warm.flush()  # nothing used yet: no write
        used["prod"] = NOW
        await warm.flush()
        used["prod"] = NOW + 5  # used again soon after: not worth a write
        await warm.flush()
        used["prod"] = NOW + 120
        await warm.flush()

    asyncio.run(scenario())
    assert writes == [{"prod": NOW}, {"prod": NOW + 120}]


def test_default_path_follows_xdg_state_home(tmp_path: Path) -> None:
    assert warmset.default_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "rolebroker" / "warm.json"


# -- end to end ------------------------------------------------------------------------------------


def assume_role_calls(sts: StsProxy, role: str) -> int:
    return sum(1 for call in sts.calls("AssumeRole") if call.params.get("RoleArn", "").endswith(role))


def test_a_restarted_daemon_warms_the_profiles_used_before(
    start_daemon: StartDaemon, aws_home: AwsHome, sts: StsProxy
) -> None:
    first = start_daemon()
    assert first.get("/creds/prod").status_code == 200
    first.stop()  # SIGTERM
    warm_file = aws_home.root / "state" / "rolebroker" / "warm.json"
    saved = warm_file.read_text()
    assert json.loads(saved)["profiles"].keys() == {"prod"}
    assert stat.S_IMODE(warm_file.stat().st_mode) == 0o600
    assert not first.leaked(saved) and BASE_SECRET not in saved

    sts.reset()
    second = start_daemon()
    deadline = time.monotonic() + 10
    while assume_role_calls(sts, "role/prod") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assume_role_calls(sts, "role/prod") == 1, "prod was not warmed before any request"
    before = sts.count()
    started = time.monotonic()
    assert second.get("/creds/prod").status_code == 200
    assert sts.count() == before, "the first request after the restart called STS"
    assert time.monotonic() - started < 1.0
    assert "warming 1 profile(s) used before the last stop: prod" in second.output()
