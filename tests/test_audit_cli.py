"""``rolebroker audit`` and the last caller in ``rolebroker status``: formatting and filters on
a file written here (in process), then the real daemon after real requests (end to end)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from rolebroker import auditlog, discovery
from rolebroker.cli.statusformat import format_status, last_caller_cell
from rolebroker.statusdoc import CallerInfo, ProfileStatus, StatusDoc
from tests.support.cli import cli_env, invoke_cli, run_cli
from tests.support.daemon import Daemon

NOW = time.time()


def _stamp(seconds_ago: float) -> str:
    moment = datetime.fromtimestamp(NOW - seconds_ago, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-4] + "Z"


def _record(profile: str, ago: float, outcome: str = "OK", **extra: object) -> dict[str, object]:
    return {"time": _stamp(ago), "profile": profile, "outcome": outcome, "status": 200, **extra}


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    """Three records in a rotated file, four in the current one (one a 'dropped' marker)."""
    path = tmp_path / "audit.jsonl"
    older = [_record("dev", 3 * 86400, uid=1000, pid=11, exe="/usr/bin/aws", cmdline=["aws", "s3", "ls"])]
    older += [_record("prod", 2 * 86400), _record("prod", 7200, "GrantExpired", grant="ci", status=403)]
    newer = [
        _record("prod", 1800, grant="ci", uid=1000, pid=4321, exe="/usr/lib/node/bin/node", cmdline=["node"]),
        {"time": _stamp(1700), "event": "dropped", "count": 5},
        _record(
            "dev\x1b[2J",
            600,
            "ForeignUser",
            uid=4242,
            pid=99,
            exe="/tmp/" + "x" * 80 + "/evil\u202e",
            cmdline=["sh", "-c", "curl http://localhost/creds/dev; " + "y" * 200],
            status=403,
        ),
        _record("prod", 60, uid=1000, pid=77, exe="/usr/bin/curl", cmdline=["curl", "localhost/creds/prod"]),
    ]
    auditlog.rotated(path, 1).write_text("".join(json.dumps(r) + "\n" for r in older))
    path.write_text("not json\n" + "".join(json.dumps(r) + "\n" for r in newer))
    return path


def audit(*args: str, env: dict[str, str] | None = None) -> list[str]:
    done = invoke_cli("audit", *args, env=env or {})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_table_oldest_first_across_rotations_escaped_and_shortened(audit_file: Path) -> None:
    lines = audit("--file", str(audit_file))
    header, rows = lines[0], lines[1:]
    assert header.split() == ["TIME", "PROFILE", "OUTCOME", "GRANT", "UID", "PID", "EXE", "COMMAND"]
    assert len(rows) == 7
    assert rows[0].startswith(_stamp(3 * 86400)[:19]) and "aws s3 ls" in rows[0]
    assert "(5 records dropped" in rows[4]
    evil = rows[5]
    assert "\x1b" not in evil and "\u202e" not in evil and "ForeignUser" in evil and "4242" in evil
    assert "x/evil" in evil  # the tail of the path is kept
    assert evil.endswith("...") and len(evil) < 200  # a long command line is cut
    assert "/usr/bin/curl" in rows[6] and "curl localhost/creds/prod" in rows[6]
    node = rows[3]
    assert node.split()[1:6] == ["prod", "OK", "ci", "1000", "4321"]


def test_filters_profile_grant_since_last(audit_file: Path) -> None:
    file = ("--file", str(audit_file))
    assert len(audit(*file, "--profile", "prod")) == 1 + 4  # no dropped marker under a filter
    granted = audit(*file, "--grant", "ci")[1:]
    assert len(granted) == 2 and all(" ci " in r for r in granted)
    recent = audit(*file, "--since", "1h")[1:]
    assert len(recent) == 4  # node (30 min), dropped (28 min), evil (10 min), curl (1 min)
    assert len(audit(*file, "--since", "4d")) == 1 + 7
    last = audit(*file, "--last", "1")[1:]
    assert len(last) == 1 and "curl" in last[0]
    since_time = datetime.fromtimestamp(NOW - 3 * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(audit(*file, "--since", since_time)) == 1 + 5


def test_json_lines_are_the_records_in_ascii(audit_file: Path) -> None:
    lines = audit("--file", str(audit_file), "--json", "--profile", "dev\x1b[2J")
    assert len(lines) == 1 and lines[0].isascii()
    record = json.loads(lines[0])
    assert record["outcome"] == "ForeignUser" and record["uid"] == 4242


def test_bad_since_and_missing_file(tmp_path: Path) -> None:
    done = invoke_cli("audit", "--file", str(tmp_path / "a.jsonl"), "--since", "yesterday", env={})
    assert done.returncode == 2 and "neither a duration" in done.stderr
    done = invoke_cli("audit", "--file", str(tmp_path / "a.jsonl"), env={})
    assert done.returncode == 0 and "no audit log at" in done.stderr


def test_the_file_is_found_through_the_daemons_discovery_file(tmp_path: Path, audit_file: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    info = discovery.DaemonInfo(9911, ("127.0.0.1",), runtime / "token", 1, audit_file=audit_file)
    discovery.write(runtime / "rolebroker" / "daemon.json", info)  # pid 1: alive
    env = {"XDG_RUNTIME_DIR": str(runtime), "XDG_STATE_HOME": str(tmp_path / "elsewhere")}
    assert len(audit(env=env)) == 8


def test_parse_since() -> None:
    assert auditlog.parse_since("90s", now=1000.0) == 910.0
    assert auditlog.parse_since("2h", now=10_000.0) == 2800.0
    assert auditlog.parse_since("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError):
        auditlog.parse_since("1 fortnight")


# -- status: the last caller ---------------------------------------------------------------------


def test_status_table_names_each_profiles_last_caller() -> None:
    now = time.time()
    at = datetime.fromtimestamp(now - 120, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = StatusDoc(
        version="x",
        caller_identity="unavailable",
        audit_file="/h/.local/state/rolebroker/audit.jsonl",
        profiles=(
            ProfileStatus(
                name="prod", state="fresh", last_caller=CallerInfo(4321, "/usr/bin/python3", at, "ci")
            ),
            ProfileStatus(name="dev", state="cold"),
        ),
    )
    text = format_status(doc, now)
    assert "LAST CALLER" in text
    assert "python3 (pid 4321, 2m ago, grant ci)" in text
    assert "Audit log: /h/.local/state/rolebroker/audit.jsonl" in text
    assert "Caller identity: unavailable" in text
    assert last_caller_cell(CallerInfo(None, "/x/evil\x1b[2J", None, None), now) == "evil\\x1b[2J"
    assert last_caller_cell(None, now) == "-"


# -- end to end ----------------------------------------------------------------------------------


def test_audit_and_status_after_real_requests(daemon: Daemon) -> None:
    env = cli_env(daemon)
    assert daemon.get("/creds/prod").status_code == 200
    assert daemon.get("/creds/dev", token="not-the-token").status_code == 403
    created = httpx.post(
        f"{daemon.base_url}/grants",
        json={"profiles": ["dev"], "ttl_seconds": 600, "name": "ci"},
        headers={"Authorization": daemon.token},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    grant = created.json()["grant"]
    assert daemon.get("/creds/prod", token=grant).json()["code"] == "GrantScope"
    assert daemon.get("/creds/dev", token=grant).status_code == 200

    def rows() -> list[dict[str, object]]:
        done = run_cli("audit", "--json", env=env)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    deadline = time.monotonic() + 10
    while len(found := rows()) < 4 and time.monotonic() < deadline:  # written by a background thread
        time.sleep(0.1)
    outcomes = [(r["profile"], r["outcome"], r.get("grant")) for r in found]
    assert outcomes == [
        ("prod", "OK", None),
        ("dev", "InvalidToken", None),
        ("prod", "GrantScope", "ci"),
        ("dev", "OK", "ci"),
    ]
    assert all(r.get("pid") and str(r.get("exe", "")).startswith("/") for r in found)

    table = run_cli("audit", "--grant", "ci", env=env)
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 3
    assert "GrantScope" in table.stdout
    status = run_cli("status", env=env)
    assert status.returncode == 0, status.stderr
    prod = next(line for line in status.stdout.splitlines() if line.startswith("prod "))
    assert "python" in prod and "pid " in prod
    dev = next(line for line in status.stdout.splitlines() if line.startswith("dev "))
    assert "grant ci" in dev
    for text in (table.stdout, status.stdout, json.dumps(found)):
        assert not daemon.leaked(text) and grant not in text


def test_follow_prints_the_last_records_then_new_ones(audit_file: Path) -> None:
    seen: list[str] = []
    steps = iter(range(100))

    def sleep(_: float) -> None:
        if next(steps) == 0:
            with audit_file.open("a") as handle:
                handle.write(json.dumps(_record("prod", 0, grant="ci", pid=5)) + "\n")
                handle.write(json.dumps(_record("dev", 0, grant="other")) + "\n")

    def stop() -> bool:
        return len(seen) >= 2

    for record in auditlog.follow(audit_file, grant="ci", last=1, interval=0, sleep=sleep, stop=stop):
        seen.append(f"{record['profile']}:{record.get('pid')}")
        if len(seen) >= 2:
            break
    assert seen == ["prod:4321", "prod:5"]
