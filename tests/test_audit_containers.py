"""Audit lines of container-listener requests name the container (in process): the writer
thread asks the lookup (containerinfo.py, here over a fake Docker API), never the request
path; the line keeps only name, image, id and engine, scrubbed; ``rolebroker audit`` shows
the name where a process would be."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from rolebroker import auditlog
from rolebroker.audit import AuditLog
from rolebroker.containerinfo import UNKNOWN, ContainerInfo, ContainerNames, Endpoint, Unknown
from rolebroker.identity import CallerIdentity
from tests.support.clock import FakeClock
from tests.support.fakedocker import ENV_SECRET, FakeDocker, container

MASTER = "abcd.efgh.ijkl.mnop.qrst.uvwx.yz12.3456"
GRANT = "rbg1.AAAAAAAAAAAAAAAAAAAAAA." + "B" * 20 + "-" + "C" * 10 + "_" + "D" * 11
WEB = ContainerInfo("web", "nginx:1.27", "0123456789ab", "docker")


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_container_requests_name_their_container_in_the_writer_thread(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    asked: list[tuple[str, float, str]] = []
    answers: dict[str, ContainerInfo | Unknown | None] = {"172.17.0.2": WEB, "172.17.0.9": None}

    def lookup(source: str, at: float) -> ContainerInfo | Unknown | None:
        asked.append((source, at, threading.current_thread().name))
        return answers.get(source, UNKNOWN)

    clock = FakeClock(1_800_000_000.0)
    log = AuditLog(path, containers=lookup, clock=clock)
    log.record(profile="dev", outcome="OK", status=200, grant="docker:web", source="172.17.0.2")
    log.record(profile="dev", outcome="GrantScope", status=403, grant="x", source="172.17.0.9")
    log.record(profile="dev", outcome="OK", status=200, grant="y", source="172.17.0.77")
    log.record(profile="dev", outcome="OK", status=200, caller=CallerIdentity(1000, 42, "/usr/bin/aws"))
    assert asked == []  # the request path only queued them
    log.start()
    log.close()
    web, nobody, unknown, local = lines(path)
    assert web["container"] == {
        "name": "web",
        "image": "nginx:1.27",
        "id": "0123456789ab",
        "engine": "docker",
    }
    assert web["source"] == "172.17.0.2"
    assert "container" in nobody and nobody["container"] is None  # asked: no container there
    assert "container" not in unknown and "container" not in local  # no answer / not a container
    assert [a[:2] for a in asked] == [
        ("172.17.0.2", clock.now),
        ("172.17.0.9", clock.now),
        ("172.17.0.77", clock.now),
    ]
    assert {a[2] for a in asked} == {"rolebroker-audit"}


def test_a_failing_lookup_costs_the_line_its_container_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    def broken(source: str, at: float) -> ContainerInfo | Unknown | None:
        raise RuntimeError("engine exploded")

    log = AuditLog(path, containers=broken)
    log.start()
    log.record(profile="dev", outcome="OK", status=200, source="172.17.0.2")
    log.record(profile="prod", outcome="OK", status=200, source="172.17.0.3")
    log.close()
    assert [(r["profile"], "container" in r) for r in lines(path)] == [("dev", False), ("prod", False)]


def test_names_and_images_are_scrubbed_and_nothing_else_is_kept(tmp_path: Path) -> None:
    """A container's name and image are chosen by whoever started it: no token or grant
    gets into the file through them, nor anything else the engine's answer holds (command
    line, labels with secrets). Long compose names stay readable."""
    path = tmp_path / "audit.jsonl"
    clock = FakeClock(1_800_000_000.0)
    sneaky = container(f"x{MASTER}", f"evil/{GRANT}:1", "abcdef012345", {"bridge": {"ipv4": "172.17.0.2"}})
    compose = container(
        "rolebroker-integration-tests-api-service-1",
        "registry.example.com/team/api:2026.1",
        "bbbbbbbbbbbb",
        {"it_default": {"ipv4": "172.18.0.3"}},
    )
    with FakeDocker(tmp_path / "docker.sock", [sneaky, compose]).running() as docker:
        names = ContainerNames([Endpoint(str(docker.path), "test")], clock=clock)
        log = AuditLog(path, secrets=lambda: [MASTER], containers=names.lookup, clock=clock)
        log.start()
        log.record(profile="dev", outcome="OK", status=200, source="172.17.0.2")
        log.record(profile="dev", outcome="OK", status=200, source="172.18.0.3")
        log.close()
    text = path.read_text()
    assert MASTER not in text and GRANT not in text and ENV_SECRET not in text
    assert "rbg1." not in text and "entrypoint" not in text
    first, second = lines(path)
    assert first["container"] == {
        "name": "x<redacted>",
        "image": "evil/<redacted>:1",
        "id": "abcdef012345",
        "engine": "docker",
    }
    assert second["container"] == {
        "name": "rolebroker-integration-tests-api-service-1",
        "image": "registry.example.com/team/api:2026.1",
        "id": "bbbbbbbbbbbb",
        "engine": "docker",
    }


def test_the_table_shows_the_container_where_a_process_would_be() -> None:
    base = {"time": "2026-11-29T20:30:01.12Z", "profile": "dev", "outcome": "OK", "status": 200}
    named = {**base, "grant": "docker:web", "source": "172.17.0.2", "container": WEB.to_json()}
    nobody = {**base, "source": "172.17.0.9", "container": None}
    unknown = {**base, "source": "172.17.0.77"}
    spoofy = {**base, "source": "172.17.0.5", "container": {**WEB.to_json(), "name": "we\x1b[2Jb"}}
    header, *rows = auditlog.format_table([named, nobody, unknown, spoofy])
    assert header.split()[-2:] == ["EXE", "COMMAND"]
    cells = [row.split("  ") for row in rows]
    assert "web" in cells[0] and rows[0].endswith(
        "container web at 172.17.0.2: nginx:1.27, docker, 0123456789ab"
    )
    assert "172.17.0.9" in rows[1] and rows[1].endswith("no running container there")
    assert rows[2].endswith("container request from 172.17.0.77")
    assert "\x1b" not in rows[3] and "we\\x1b[2Jb" in rows[3]
