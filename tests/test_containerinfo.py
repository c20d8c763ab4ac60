"""Naming the container behind an address (containerinfo.py), against a fake Docker/Podman
API on a Unix socket (tests/support/fakedocker.py), with a fake clock for every cache and
rate-limit window. Only the I/O deadlines run in real time (they are socket timeouts)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolebroker import containerinfo as ci
from rolebroker.containerinfo import UNKNOWN, ContainerInfo, ContainerNames, Endpoint
from tests.support.clock import FakeClock
from tests.support.fakedocker import ENV_SECRET, FakeDocker, container

REPO = Path(__file__).resolve().parent.parent

WEB = container(
    "web",
    "nginx:1.27",
    "0123456789ab",
    {"bridge": {"ipv4": "172.17.0.2"}, "app_default": {"ipv4": "172.18.0.5", "ipv6": "fd00:dead::5"}},
)
HOSTNET = container("hostnet", "busybox", "1111111111aa", {"host": {}})
NONET = container("isolated", "alpine:3", "2222222222bb", {})
BROKEN = {**container("broken", "x", "3333333333cc"), "NetworkSettings": None}
NAMELESS = {"Id": "not-hex", "Names": "/oops", "NetworkSettings": {"Networks": []}}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[FakeDocker]:
    with FakeDocker(tmp_path / "docker.sock", [WEB, HOSTNET, NONET, BROKEN, NAMELESS]).running() as fake:
        yield fake


def names(fake: FakeDocker, clock: FakeClock, *more: FakeDocker) -> ContainerNames:
    return ContainerNames([Endpoint(str(f.path), "test") for f in (fake, *more)], clock=clock)


def test_a_listing_names_each_container_at_every_address(docker: FakeDocker, clock: FakeClock) -> None:
    lookup = names(docker, clock)
    web = lookup.lookup("172.17.0.2", clock.now)
    assert web == ContainerInfo(name="web", image="nginx:1.27", id="0123456789ab", engine="docker")
    assert lookup.lookup("172.18.0.5", clock.now) == web  # its second network
    assert lookup.lookup("fd00:dead:0::5", clock.now) == web  # IPv6, any spelling
    assert lookup.lookup("::ffff:172.17.0.2", clock.now) == web  # IPv4-mapped
    assert lookup.lookup("172.17.0.9", clock.now) is None  # no running container there
    assert lookup.lookup("not an address", clock.now) is UNKNOWN
    assert docker.calls == 1  # one listing answered all of them
    # Only the name, image, id and engine are kept: not the command line or labels.
    assert ENV_SECRET not in repr(vars(lookup))
    assert isinstance(web, ContainerInfo) and set(web.to_json()) == {"name", "image", "id", "engine"}


def test_podman_and_docker_are_both_asked_and_told_apart(tmp_path: Path, clock: FakeClock) -> None:
    pod = container("pod-job", "quay.io/podman/hello", "4444444444dd", {"podman": {"ipv4": "10.88.0.7"}})
    clash = container("clash", "busybox", "5555555555ee", {"podman": {"ipv4": "172.17.0.2"}})
    with (
        FakeDocker(tmp_path / "docker.sock", [WEB]).running() as docker,
        FakeDocker(tmp_path / "podman.sock", [pod, clash], podman=True).running() as podman,
    ):
        lookup = names(docker, clock, podman)
        found = lookup.lookup("10.88.0.7", clock.now)
        assert isinstance(found, ContainerInfo) and (found.name, found.engine) == ("pod-job", "podman")
        web = ContainerInfo("web", "nginx:1.27", "0123456789ab", "docker")
        assert lookup.lookup("172.18.0.5", clock.now) == web
        # Two engines claim one address: neither is named (and "no container" is not claimed).
        assert lookup.lookup("172.17.0.2", clock.now) is UNKNOWN
        assert (docker.calls, podman.calls) == (1, 1)


def test_a_stale_mapping_expires(docker: FakeDocker, clock: FakeClock) -> None:
    lookup = names(docker, clock)
    assert isinstance(found := lookup.lookup("172.17.0.2", clock.now), ContainerInfo) and found.name == "web"
    # web stops; its address goes to another container.
    docker.containers = [container("api", "my-api:2", "6666666666ff", {"bridge": {"ipv4": "172.17.0.2"}})]
    clock.advance(ci.FRESH - 1)
    assert isinstance(found := lookup.lookup("172.17.0.2", clock.now - 1), ContainerInfo)
    assert found.name == "web" and docker.calls == 1  # cached, for at most FRESH seconds
    clock.advance(1.01)
    assert isinstance(found := lookup.lookup("172.17.0.2", clock.now), ContainerInfo) and found.name == "api"
    assert docker.calls == 2


def test_a_miss_is_remembered_but_a_new_container_is_found(docker: FakeDocker, clock: FakeClock) -> None:
    lookup = names(docker, clock)
    assert lookup.lookup("172.17.0.50", clock.now) is None
    assert docker.calls == 1
    clock.advance(ci.MIN_INTERVAL * 3)
    # The same address again, after the interval: the negative cache answers, no call.
    assert lookup.lookup("172.17.0.50", clock.now) is None
    assert docker.calls == 1
    # A container started after the last listing, asking at once: a new listing finds it.
    late = container("late", "aws-cli", "7777777777aa", {"bridge": {"ipv4": "172.17.0.60"}})
    docker.containers.append(late)
    found = lookup.lookup("172.17.0.60", clock.now)
    assert isinstance(found, ContainerInfo) and found.name == "late"
    assert docker.calls == 2
    clock.advance(ci.NEGATIVE_TTL)
    assert lookup.lookup("172.17.0.50", clock.now) is None
    assert docker.calls == 3  # the miss expired: asked again


def test_a_flood_of_lookups_is_one_list_call_per_interval(docker: FakeDocker, clock: FakeClock) -> None:
    lookup = names(docker, clock)
    start = clock.now
    answers = []
    for i in range(1000):  # a spoofing container: a new address for every request
        answers.append(lookup.lookup(f"172.17.{i // 250}.{i % 250 + 3}", clock.now))
        clock.advance(0.002)
    assert clock.now - start == pytest.approx(2 * ci.MIN_INTERVAL, abs=0.01)
    assert docker.calls == 2  # at 0 s and at 1 s: not 1000
    assert set(map(type, answers)) <= {type(None), type(UNKNOWN)}


@pytest.mark.parametrize("mode", ["garbage", "status", "huge", "slow"])
def test_a_bad_answer_is_no_name_and_is_not_asked_again_at_once(
    tmp_path: Path, clock: FakeClock, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken or hostile engine costs at most TIMEOUT once per RETRY_FAILED, and memory
    for MAX_BODY bytes: ``huge`` holds the container, so without the cap it would be named."""
    caplog.set_level(logging.INFO, logger="rolebroker")
    with FakeDocker(tmp_path / "docker.sock", [WEB]).running() as docker:
        docker.mode, docker.delay, docker.huge = mode, 3.0, ci.MAX_BODY
        lookup = names(docker, clock)
        started = time.monotonic()
        assert lookup.lookup("172.17.0.2", clock.now) is UNKNOWN
        assert time.monotonic() - started < ci.TIMEOUT + 1.0
        clock.advance(ci.RETRY_FAILED / 2)
        assert lookup.lookup("172.17.0.2", clock.now) is UNKNOWN
        assert docker.calls == 1
        clock.advance(ci.RETRY_FAILED / 2)
        docker.mode = "ok"
        assert isinstance(lookup.lookup("172.17.0.2", clock.now), ContainerInfo)
    said = [r for r in caplog.records if r.name.startswith("rolebroker")]
    assert [r.levelname for r in said] == ["WARNING", "INFO"], [r.getMessage() for r in said]
    assert "docker.sock failed" in said[0].getMessage()
    assert ENV_SECRET not in caplog.text


def test_a_dripping_answer_ends_at_the_deadline(tmp_path: Path, clock: FakeClock) -> None:
    """A byte every 50 ms never trips a per-read timeout; the whole call still ends in time."""
    with FakeDocker(tmp_path / "docker.sock", [WEB]).running() as docker:
        docker.mode, docker.delay = "drip", 0.05
        lookup = names(docker, clock)
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(lookup.lookup("172.17.0.2", clock.now)))
        started = time.monotonic()
        worker.start()
        worker.join(ci.TIMEOUT + 2.0)
        assert not worker.is_alive(), "the lookup outlived its deadline"
        assert results == [UNKNOWN] and time.monotonic() - started < ci.TIMEOUT + 1.0


def test_a_missing_socket_is_said_once_with_what_to_do(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rolebroker")
    lookup = ContainerNames(
        [Endpoint(str(tmp_path / sock), "default") for sock in ("docker.sock", "podman.sock")], clock=clock
    )
    for _ in range(3):
        assert lookup.lookup("172.17.0.2", clock.now) is UNKNOWN
        clock.advance(ci.RETRY_UNAVAILABLE + 1)  # tried again each time: the engine may start
    assert lookup.list_calls == 6
    said = [r for r in caplog.records if r.name.startswith("rolebroker")]
    assert len(said) == 1 and said[0].levelname == "INFO", [r.getMessage() for r in said]
    message = said[0].getMessage()
    assert "docker.sock" in message and "podman.sock" in message and "docker group" in message
    assert "DOCKER_HOST" in message and "container_names = false" in message


_AS_NOBODY = """
import json, os, sys, logging
from rolebroker import containerinfo as ci
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
os.setgroups([]); os.setgid(65534); os.setuid(65534)
names = ci.ContainerNames([ci.Endpoint(sys.argv[1], "test")])
print(json.dumps([str(names.lookup("172.17.0.2", 0.0)) for _ in range(3)]))
"""


def test_a_socket_this_user_cannot_open_is_no_lookup(docker: FakeDocker) -> None:
    """The daemon's user lacks permission (here: a process dropped to nobody, since root
    opens any socket): no name, no error, one line saying what to do."""
    script = _AS_NOBODY
    if os.geteuid() == 0:
        docker.path.chmod(0o600)
    else:  # not root: the socket's mode alone shuts this user out
        docker.path.chmod(0)
        script = script.replace("os.setgroups([]); os.setgid(65534); os.setuid(65534)", "")
    done = subprocess.run(
        [sys.executable, "-c", script, str(docker.path)],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["Unknown.UNKNOWN"] * 3
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("INFO audit: container lines name the source"), lines
    assert "Permission denied" in lines[0] and "docker group" in lines[0]
    assert docker.calls == 0


def test_the_sockets_come_from_the_environment() -> None:
    default, notes = ci.endpoints_from_environ({})
    assert [e.path for e in default] == ["/var/run/docker.sock", "/run/podman/podman.sock"] and not notes
    chosen, notes = ci.endpoints_from_environ(
        {"DOCKER_HOST": "unix:///home/u/.docker/run/docker.sock", "CONTAINER_HOST": "unix:///run/p.sock"}
    )
    assert [(e.path, e.origin) for e in chosen] == [
        ("/home/u/.docker/run/docker.sock", "DOCKER_HOST"),
        ("/run/p.sock", "CONTAINER_HOST"),
    ]
    remote, notes = ci.endpoints_from_environ({"DOCKER_HOST": "tcp://10.0.0.5:2376"})
    assert [e.path for e in remote] == ["/run/podman/podman.sock"]
    assert notes == ["DOCKER_HOST is not a unix:// socket (tcp): not asked"]
