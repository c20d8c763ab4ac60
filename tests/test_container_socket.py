"""The container port held by the service manager (systemd/rolebroker-containers.socket).

In process: which passed socket becomes the container listener (by ``LISTEN_FDNAMES`` name
or by address, never a loopback listener), and what the daemon does with it (``containers``
off, a port other than ``container_port``, the address not there yet).

End to end, in private network namespaces (tests/support/bridgenet.py): ``systemd-socket-
activate`` holds the unit's ``ListenStream=`` in the "host" namespace as the user manager
would; another uid cannot bind the port while the daemon is not running, and a container's
request through 169.254.170.2:80 starts the daemon, which serves it on the inherited socket.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from rolebroker import container_server as container_server_module
from rolebroker import daemon as daemon_module
from rolebroker.authtoken import load_or_create_token
from rolebroker.cli import containers_setup as containers
from rolebroker.config import DEFAULT_CONTAINER_PORT, Settings
from rolebroker.grants import GrantStore
from rolebroker.listeners import CONTAINER_FD_NAME, sort_passed
from tests.support.bridgenet import BridgeNet, bridgenet, fetch, namespace_problem, start_moto
from tests.support.ci import skip_or_fail
from tests.support.daemon import BASE_SECRET, CHAIN_CONFIG, CHAIN_CREDENTIALS, REPO, AwsHome
from tests.support.procs import ManagedProcess
from tests.support.waiting import wait_until
from tests.test_squatters import OTHER_UID, SYSTEM_PYTHON, TRY_BIND, as_other_user, needs_other_uid

pytestmark = pytest.mark.xdist_group("container-socket")  # one namespace rig, on one worker

UNITS = REPO / "systemd"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
DAEMON_PORT = 9911
MOTO_PORT = 5000
"""Ports inside the private "host" namespace: nothing else listens there."""


def unit_value(unit: str, key: str) -> str:
    """The one ``key=`` of a shipped unit: the end-to-end tests hold what the unit holds."""
    values = [
        line.partition("=")[2].strip()
        for line in (UNITS / unit).read_text().splitlines()
        if line.partition("=")[0].strip() == key
    ]
    assert len(values) == 1, (unit, key, values)
    return values[0]


def test_the_unit_holds_what_the_daemon_looks_for() -> None:
    assert unit_value("rolebroker-containers.socket", "FileDescriptorName") == CONTAINER_FD_NAME
    stream = unit_value("rolebroker-containers.socket", "ListenStream")
    assert stream == f"{container_server_module.ADDRESS}:{DEFAULT_CONTAINER_PORT}"


# --------------------------------------------------------------------------- which socket


def listener(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


@pytest.fixture
def sockets() -> Iterator[dict[str, socket.socket]]:
    """Listeners on loopback addresses standing in for each kind: 127.0.0.2 plays the
    container address (tests use loopback only)."""
    made = {
        name: listener(host)
        for name, host in [("lo", "127.0.0.1"), ("ecs", "127.0.0.2"), ("odd", "127.0.0.3")]
    }
    try:
        yield made
    finally:
        for sock in made.values():
            sock.close()


def test_the_named_socket_is_the_container_port_and_never_a_loopback_listener(
    sockets: dict[str, socket.socket],
) -> None:
    """127.0.0.2 is a loopback address: the loopback logic would serve it (with the master
    token and the admin routes) if the name did not set it aside."""
    passed = [("rolebroker.socket", sockets["lo"]), (CONTAINER_FD_NAME, sockets["ecs"])]
    loopback, container = sort_passed(passed, "127.0.0.2")
    assert loopback == [sockets["lo"]]
    assert container is sockets["ecs"]


def test_an_unnamed_socket_on_the_container_address_is_the_container_port(
    sockets: dict[str, socket.socket],
) -> None:
    """A ListenStream= added to rolebroker.socket itself (named after that unit) counts too."""
    passed = [("rolebroker.socket", sockets["ecs"]), ("rolebroker.socket", sockets["lo"])]
    loopback, container = sort_passed(passed, "127.0.0.2")
    assert (loopback, container) == ([sockets["lo"]], sockets["ecs"])


def test_a_container_socket_on_another_address_is_closed_with_a_warning(
    sockets: dict[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    """Say 0.0.0.0, which would face the LAN: not served, and the loopback endpoint goes on."""
    odd_port = sockets["odd"].getsockname()[1]
    passed = [(CONTAINER_FD_NAME, sockets["odd"]), ("rolebroker.socket", sockets["lo"])]
    loopback, container = sort_passed(passed, "127.0.0.2")
    assert (loopback, container) == ([sockets["lo"]], None)
    assert sockets["odd"].fileno() == -1
    assert f"bound to 127.0.0.3:{odd_port}, not 127.0.0.2; not serving it" in caplog.text
    assert "rolebroker-containers.socket" in caplog.text


def test_a_second_container_socket_is_closed(
    sockets: dict[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    second = listener("127.0.0.2")
    try:
        passed = [(CONTAINER_FD_NAME, sockets["ecs"]), (CONTAINER_FD_NAME, second)]
        loopback, container = sort_passed(passed, "127.0.0.2")
        assert (loopback, container) == ([], sockets["ecs"])
        assert second.fileno() == -1
        assert "serving only the first" in caplog.text
    finally:
        second.close()


# --------------------------------------------------------------------------- what the daemon does


def container_server(settings: Settings, passed: socket.socket) -> daemon_module.ContainerServer | None:
    """daemon._container_server without a broker: it only builds the app around them."""
    none = cast(Any, None)
    return daemon_module._container_server(settings, none, none, none, None, 1024, passed=passed)


def test_with_containers_off_the_passed_socket_is_closed_and_logged(
    sockets: dict[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rolebroker")
    settings = Settings(token_file=Path("/nonexistent"), containers="off")
    assert container_server(settings, sockets["ecs"]) is None
    assert sockets["ecs"].fileno() == -1
    assert "containers = off" in caplog.text
    assert "systemctl --user disable --now rolebroker-containers.socket" in caplog.text


def test_a_passed_socket_is_served_even_before_the_address_exists(
    sockets: dict[str, socket.socket], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` turns the listener off when 169.254.170.2 is missing, but a held socket
    says the user wants it: served, like ``on`` (it works once the set-up adds the address)."""
    caplog.set_level(logging.INFO, logger="rolebroker")
    monkeypatch.setattr(container_server_module, "address_present", lambda address="": False)
    port = int(sockets["ecs"].getsockname()[1])
    settings = Settings(token_file=Path("/nonexistent"), containers="auto", container_port=port)
    side = container_server(settings, sockets["ecs"])
    assert side is not None and side.sock is sockets["ecs"]
    assert "is not on this machine yet" in caplog.text
    assert f"container listener on {containers.ADDRESS}:{port} (passed by the service manager" in caplog.text
    assert "container_port is" not in caplog.text


def test_a_passed_socket_on_another_port_is_served_and_the_mismatch_logged(
    sockets: dict[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    """The socket decides where the daemon listens (as for loopback); the log says which
    side to change so that the set-up's DNAT and the socket agree."""
    caplog.set_level(logging.INFO, logger="rolebroker")
    port = int(sockets["ecs"].getsockname()[1])
    settings = Settings(token_file=Path("/nonexistent"), containers="on", container_port=9912)
    side = container_server(settings, sockets["ecs"])
    assert side is not None and side.sock is sockets["ecs"]
    assert f"but container_port is 9912; serving {port}" in caplog.text
    assert f"rolebroker containers setup --port {port} --apply" in caplog.text
    assert f"container listener on {containers.ADDRESS}:{port} (passed by the service manager" in caplog.text


# --------------------------------------------------------------------------- end to end


@dataclass
class Host:
    net: BridgeNet
    home: AwsHome
    moto: ManagedProcess
    grant: str

    @property
    def token(self) -> str:
        return self.home.token_file.read_text()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """The laptop after ``containers setup``: address, DNAT and drop rules in the host
    namespace, moto on its loopback, and a user whose daemon ran once (token and one grant
    for ``dev`` on disk) but is stopped now."""
    if (problem := namespace_problem()) is not None:
        skip_or_fail(problem)
    if SOCKET_ACTIVATE is None:
        skip_or_fail("systemd-socket-activate is not installed (Debian package systemd)")
    home = AwsHome(tmp_path_factory.mktemp("container-socket") / "home")
    home.write(CHAIN_CONFIG, CHAIN_CREDENTIALS)
    token = load_or_create_token(home.token_file)
    store = GrantStore(home.root / "state" / "rolebroker" / "grants.json", lambda: token)
    _grant, grant = store.create(["dev"], ttl=3600, name="docker:held")
    port = int(unit_value("rolebroker-containers.socket", "ListenStream").rsplit(":", 1)[1])
    with bridgenet() as net:
        net.apply(containers.setup_plan(port, link_kind=net.link_kind, persist=False))
        moto = start_moto(net.host, MOTO_PORT)
        try:
            yield Host(net, home, moto, grant)
        finally:
            moto.cleanup()


def held(host: Host) -> ManagedProcess:
    """What the user manager does with rolebroker.socket and rolebroker-containers.socket:
    hold both (their ListenStream= and FileDescriptorName=, the loopback one on this test's
    port) and start ``rolebroker serve`` on the first connection to either."""
    assert SOCKET_ACTIVATE is not None
    container_stream = unit_value("rolebroker-containers.socket", "ListenStream")
    name = unit_value("rolebroker-containers.socket", "FileDescriptorName")
    env = {**host.home.env(f"http://127.0.0.1:{MOTO_PORT}"), "ROLEBROKER_CONTAINERS": "auto"}
    launcher = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{DAEMON_PORT}", "-l", container_stream]
    launcher += [f"--fdname=rolebroker.socket:{name}"]
    launcher += [f"-E{key}={value}" for key, value in env.items() if key != "PATH"]
    launcher += ["--", sys.executable, "-m", "rolebroker", "serve"]
    base = {"PATH": env["PATH"], "HOME": str(host.home.root)}
    proc = ManagedProcess(host.net.host.argv(*launcher), base, cwd=host.home.root)
    wait_until(lambda: "Listening on" in proc.output() or not proc.running(), 10, "systemd-socket-activate")
    assert proc.running(), proc.output()
    return proc


def stop(proc: ManagedProcess, host: Host) -> str:
    try:
        proc.signal(signal.SIGTERM)
        proc.proc.wait(20)
        output = proc.output()
    finally:
        proc.cleanup()
    leaked = [f"{s[:4]}...({len(s)} chars)" for s in (host.token, host.grant, BASE_SECRET) if s in output]
    assert not leaked, f"secrets in the daemon's output: {leaked}"
    return output


def try_bind(host: Host, address: str, port: int) -> str:
    """uid 4242, in the host namespace, binding address:port: EADDRINUSE or BOUND."""
    done = subprocess.run(
        host.net.host.argv(*as_other_user(SYSTEM_PYTHON, "-c", TRY_BIND, address, str(port))),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


@needs_other_uid
def test_another_user_cannot_take_the_held_container_port_while_the_daemon_is_stopped(host: Host) -> None:
    address, _, port_text = unit_value("rolebroker-containers.socket", "ListenStream").rpartition(":")
    assert address == containers.ADDRESS and unit_value("rolebroker-containers.socket", "FreeBind") == "yes"
    port = int(port_text)
    # The gap as it was: with nothing holding the port, any uid can bind it.
    assert try_bind(host, address, port) == "BOUND"
    proc = held(host)
    try:
        for where in (address, "0.0.0.0"):
            assert try_bind(host, where, port) == "EADDRINUSE", (where, OTHER_UID)
        # Still the launcher, not the daemon: nobody connected yet.
        assert Path(f"/proc/{proc.pid}/comm").read_text().startswith("systemd-socket"), proc.output()
    finally:
        stop(proc, host)


def test_a_containers_request_starts_the_daemon_and_is_served_on_the_held_socket(host: Host) -> None:
    """The container's connection waits in the held socket's queue while the daemon starts;
    the daemon serves that socket as its container listener (grants only) and the loopback one
    as usual, and never binds the container port itself."""
    proc = held(host)
    try:
        url = f"http://{containers.ADDRESS}/creds/dev"  # port 80: the set-up's DNAT to the held port
        [served] = fetch(
            host.net.container1, {"url": url, "headers": {"Authorization": host.grant}}, timeout=30
        )
        assert served.get("status") == 200, (served, proc.output()[-3000:])
        assert served["body"]["AccessKeyId"].startswith("ASIA"), served
        [master] = fetch(host.net.container1, {"url": url, "headers": {"Authorization": host.token}})
        assert master["body"]["code"] == "MasterTokenOnContainerListener", master
        [loopback] = fetch(
            host.net.host,
            {"url": f"http://127.0.0.1:{DAEMON_PORT}/creds/dev", "headers": {"Authorization": host.token}},
        )
        assert loopback["body"]["AccessKeyId"] == served["body"]["AccessKeyId"], loopback
    finally:
        output = stop(proc, host)
    assert f"container listener on {containers.ADDRESS}:9912 (passed by the service manager" in output, output
    assert re.search(rf"listening on 127\.0\.0\.1:{DAEMON_PORT}.*\(passed by the service manager\)", output)
    assert "Traceback" not in output, output
