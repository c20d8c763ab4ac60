"""The audit log: one secret-free JSON line per credential request, bounded on disk and in memory."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from rolebroker import audit
from rolebroker.audit import AuditLog, follow, format_table, read_audit
from rolebroker.identity import CallerIdentity
from tests.support.clock import FakeClock

MASTER = "abcd.efgh.ijkl.mnop.qrst.uvwx.yz12.3456"  # a user-chosen token: no long run to spot
GRANT = "rbg1.AAAAAAAAAAAAAAAAAAAAAA." + "B" * 20 + "-" + "C" * 10 + "_" + "D" * 11  # no base64 run
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS_KEY = "ASIAIOSFODNN7EXAMPLE"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "rolebroker" / "audit.jsonl"


def written(log: AuditLog) -> None:
    log.close()


def test_one_line_per_request_with_the_caller(path: Path) -> None:
    log = AuditLog(path)
    log.start()
    caller = CallerIdentity(1000, 4321, "/usr/bin/python3", ("python3", "deploy.py"), "/home/u/app")
    assert log.record(
        profile="prod",
        outcome="OK",
        status=200,
        role_arn="arn:aws:iam::222222222222:role/deploy",
        grant="ci",
        caller=caller,
        user_agent="Boto3/1.43.11",
    )
    log.record(profile="dev", outcome="GrantScope", status=403, grant="ci")
    written(log)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["profile"] == "prod" and first["outcome"] == "OK" and first["status"] == 200
    assert first["uid"] == 1000 and first["pid"] == 4321 and first["cmdline"] == ["python3", "deploy.py"]
    assert first["cwd"] == "/home/u/app" and first["user_agent"] == "Boto3/1.43.11"
    assert first["time"].endswith("Z")
    assert "uid" not in json.loads(lines[1])  # unknown fields are left out, not null
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_no_secret_reaches_the_file(path: Path) -> None:
    log = AuditLog(path, secrets=lambda: [MASTER])
    log.start()
    caller = CallerIdentity(
        0,
        1,
        "/usr/bin/curl",
        (
            "curl",
            "-H",
            f"Authorization: {MASTER}",
            "-H",
            f"Authorization:{GRANT}",
            SECRET_KEY,
            ACCESS_KEY,
            MASTER,
        ),
        "/",
    )
    log.record(profile="prod", outcome="OK", status=200, caller=caller, user_agent=f"x {GRANT} {MASTER}")
    written(log)
    text = path.read_text()
    for secret in (MASTER, GRANT, GRANT.rsplit(".", 1)[1], SECRET_KEY, ACCESS_KEY):
        assert secret not in text
    assert "<redacted>" in text


def test_caller_text_is_bounded_and_ascii(path: Path) -> None:
    log = AuditLog(path)
    log.start()
    evil = "a\nb\x1b[2J\u202egnp.exe"
    caller = CallerIdentity(0, 1, "/x" * 5000, tuple(["arg"] * 1000), "/")
    log.record(profile=evil * 100, outcome="OK", status=200, caller=caller, user_agent="u" * 10_000)
    written(log)
    raw = path.read_bytes()
    assert raw.isascii() and raw.count(b"\n") == 1 and b"\x1b" not in raw
    assert len(raw) < 8 * 1024
    record = json.loads(raw)
    assert len(record["profile"]) <= 256 and len(record["user_agent"]) <= 256
    assert len(record["cmdline"]) <= 66
    table = "\n".join(format_table([record]))
    assert "\x1b" not in table and "\u202e" not in table and table.count("\n") == 1


def test_rotation_keeps_the_log_bounded(path: Path) -> None:
    log = AuditLog(path, max_bytes=2000, backups=2)
    log.start()
    for n in range(200):
        log.record(profile=f"p{n}", outcome="OK", status=200)
    written(log)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    # the reader goes oldest first across the files, and the newest record is last
    profiles = [r["profile"] for r in read_audit(path)]
    assert profiles[-1] == "p199"
    assert [int(p[1:]) for p in profiles] == sorted(int(p[1:]) for p in profiles)


def test_a_full_queue_drops_and_counts_never_blocks(path: Path) -> None:
    log = AuditLog(path, queue_size=3)  # writer not started: the queue fills
    results = [log.record(profile="p", outcome="OK", status=200) for _ in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert log.dropped == 7
    log.start()
    written(log)
    records = list(read_audit(path))
    assert records[0]["event"] == "dropped" and records[0]["count"] == 7
    assert len(records) == 4
    assert "7 records dropped" in "\n".join(format_table(records))


def test_reader_filters_by_profile_and_time(path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    log = AuditLog(path, clock=clock)
    log.start()
    for profile in ("dev", "prod", "dev"):
        log.record(profile=profile, outcome="OK", status=200)
        clock.now += 3600
    written(log)
    path.open("a").write("not json\n{\n")
    assert [r["profile"] for r in read_audit(path)] == ["dev", "prod", "dev"]
    assert len(list(read_audit(path, profile="dev"))) == 2
    assert [r["profile"] for r in read_audit(path, since=1_800_000_000.0 + 3600)] == ["prod", "dev"]
    assert list(read_audit(path.with_name("missing.jsonl"))) == []


def test_follow_sees_new_lines_and_rotation(path: Path) -> None:
    log = AuditLog(path, max_bytes=400, backups=1)
    log.start()
    log.record(profile="before", outcome="OK", status=200)
    log.close()
    seen: list[str] = []
    stop = threading.Event()
    steps = iter(range(1000))

    def sleep(_: float) -> None:
        step = next(steps)
        if step == 0:
            log.start()
            for n in range(6):  # enough to rotate at 400 bytes
                log.record(profile=f"new{n}", outcome="OK", status=200)
            log.close()
        if len(seen) >= 7 or step > 50:
            stop.set()

    for record in follow(path, interval=0, sleep=sleep, stop=stop.is_set):
        seen.append(record["profile"])
    assert seen[0] == "before"
    assert set(seen[1:]) <= {f"new{n}" for n in range(6)}
    assert seen[-1] == "new5"


def test_default_paths_are_under_the_state_dir(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    assert audit.default_audit_file(env) == tmp_path / "rolebroker" / "audit.jsonl"
    from rolebroker.grants import default_grants_file

    assert default_grants_file(env) == tmp_path / "rolebroker" / "grants.json"


@pytest.mark.parametrize(
    "at",
    [1_800_000_000.0, 1_800_000_000.0015, 1_800_000_000.9995, 1_800_000_000.9999995, 1_800_000_059.0000004],
)
def test_a_repeated_request_is_written_as_a_fresh_one_would_be(path: Path, at: float) -> None:
    """The writer keeps each repeated request's line after its time stamp: the line must be
    byte for byte the one formatted from scratch, millisecond rounding at a second's edge too."""
    log = AuditLog(path)
    who = CallerIdentity(uid=1000, pid=42, exe="/usr/bin/python3", cmdline=("python3", "x.py"), cwd="/w")
    first = audit._Pending(at - 61.5, "prod", "OK", 200, "arn:aws:iam::1:role/r", None, who, "ua/1", None)
    again = first._replace(at=at)
    other = again._replace(outcome="GrantScope", status=403)
    for raw in (first, again, other, again):
        assert log._format(raw) == log._line(log._finish(raw))
    assert log._format(again) != log._format(other)
