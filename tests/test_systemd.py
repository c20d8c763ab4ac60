"""systemd integration: sd_notify and sd_listen_fds against real sockets and real child
processes, the unit files through ``systemd-analyze verify``, and the launchd plist.

No systemd is running here: ``systemd-socket-activate`` hands sockets to children exactly
as the service manager does, and each test binds its own ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import plistlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolebroker import systemd
from tests.support.ci import skip_or_fail
from tests.support.procs import ManagedProcess, free_port, ipv6_loopback

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
PLIST = REPO / "launchd" / "dev.rolebroker.plist"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd exists only on Linux")


def require_tool(path: str | None, name: str) -> str:
    """Skip visibly on a developer machine without the tool; in CI a missing tool is a failure,
    so the unit files can never go unchecked there."""
    if path is None:
        skip_or_fail(f"{name} is not installed (Debian package systemd)")
    return path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def datagram_listener(address: str | bytes) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.settimeout(10)
        yield sock
    finally:
        sock.close()


def assert_no_more_datagrams(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(65536)


# --- notify -----------------------------------------------------------------------------


def test_notify_sends_one_datagram_to_a_path_socket(short_dir: Path) -> None:
    path = short_dir / "notify"
    with datagram_listener(str(path)) as receiver:
        state = "READY=1\nSTATUS=serving on 127.0.0.1:9911"
        assert systemd.notify(state, environ={"NOTIFY_SOCKET": str(path)}) is True
        assert receiver.recv(65536) == state.encode()
        assert_no_more_datagrams(receiver)


@linux_only
def test_notify_sends_to_an_abstract_socket() -> None:
    name = f"rolebroker-test-{uuid.uuid4().hex}"
    with datagram_listener(b"\0" + name.encode()) as receiver:
        assert systemd.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert receiver.recv(65536) == b"STOPPING=1"
        assert_no_more_datagrams(receiver)


def test_notify_reads_os_environ_by_default(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = short_dir / "notify"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with datagram_listener(str(path)) as receiver:
        assert systemd.notify("READY=1") is True
        assert receiver.recv(65536) == b"READY=1"


def test_notify_without_systemd_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.notify("READY=1", environ={}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_notify_on_a_missing_or_broken_socket_returns_false_and_logs(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rolebroker.systemd")
    stream_path = short_dir / "stream"
    regular_file = short_dir / "file"
    regular_file.write_text("")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(stream_path))
        stream.listen()
        for address in (
            str(short_dir / "does-not-exist"),
            str(regular_file),
            str(stream_path),  # a socket of the wrong type
            f"@rolebroker-test-nobody-{uuid.uuid4().hex}",
            "/" + "x" * 200,  # longer than sun_path
            "relative/path",
            "vsock:2:1234",
        ):
            assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": address}) is False, address
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 7


def test_notify_refuses_an_empty_state() -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        systemd.notify("", environ={"NOTIFY_SOCKET": "/nonexistent"})


def test_reloading_message_carries_the_monotonic_clock() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = systemd.reloading_message()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match is not None, message
    assert before <= int(match[1]) <= after
    assert systemd.reloading_message("re-reading ~/.aws/config").endswith("\nSTATUS=re-reading ~/.aws/config")


# --- listen_sockets: in this process (no descriptors handed over) ---------------------------


def test_listen_sockets_without_activation_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_sockets() == []
    assert systemd.listen_sockets(environ={}) == []


def test_listen_sockets_for_another_process_is_empty_and_unsets() -> None:
    env = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "KEEP": "1"}
    assert systemd.listen_sockets(environ=env) == []
    assert env == {"KEEP": "1"}

    env = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1"}
    assert systemd.listen_sockets(environ=env, unset_env=False) == []
    assert env == {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1"}


@pytest.mark.parametrize(
    ("pid", "fds", "message"),
    [
        ("abc", "1", "LISTEN_PID='abc'"),
        ("0", "1", "LISTEN_PID='0'"),
        ("-5", "1", "LISTEN_PID='-5'"),
        ("self", "x", "LISTEN_FDS='x'"),
        ("self", "-1", "LISTEN_FDS='-1'"),
        ("self", "1_0", "LISTEN_FDS='1_0'"),
    ],
)
def test_listen_sockets_rejects_malformed_variables(pid: str, fds: str, message: str) -> None:
    env = {"LISTEN_PID": str(os.getpid()) if pid == "self" else pid, "LISTEN_FDS": fds}
    with pytest.raises(ValueError, match=re.escape(message)):
        systemd.listen_sockets(environ=env)
    assert env == {}, "the variables are unset even when they are rejected"


def test_listen_sockets_with_zero_descriptors_is_empty() -> None:
    assert systemd.listen_sockets(environ={"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) == []


# --- socket_address ------------------------------------------------------------------------


def test_socket_address_of_listening_ipv4_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert systemd.socket_address(sock) == ("127.0.0.1", sock.getsockname()[1])


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_socket_address_of_ipv6_and_mapped_sockets() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        sock.listen()
        assert systemd.socket_address(sock) == ("::1", sock.getsockname()[1])
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.1", 0))
        sock.listen()
        assert systemd.socket_address(sock) == ("127.0.0.1", sock.getsockname()[1])


def test_socket_address_rejects_sockets_uvicorn_cannot_serve(short_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="not a stream socket"):
            systemd.socket_address(udp)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(short_dir / "s"))
        unix.listen()
        with pytest.raises(ValueError, match="AF_UNIX, not TCP/IP"):
            systemd.socket_address(unix)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                for connected in (client, accepted):  # what Accept=yes would pass
                    with pytest.raises(ValueError, match="not listening"):
                        systemd.socket_address(connected)


# --- listen_sockets: real hand-over through systemd-socket-activate -------------------------

# Runs in the socket-activated child: reports what it received over each passed socket.
ACTIVATED_CHILD = r"""
import json, os, sys
from rolebroker import systemd

foreign = dict(os.environ, LISTEN_PID=str(os.getppid()))
report = {
    "pid": os.getpid(),
    "listen_pid": os.environ.get("LISTEN_PID"),
    "foreign_pid_result": len(systemd.listen_sockets(environ=foreign)),
}
passed = systemd.listen_sockets_with_names()
report["env_left"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
report["sockets"] = [
    {
        "name": name,
        "fd": sock.fileno(),
        "inheritable": sock.get_inheritable(),
        "address": list(systemd.socket_address(sock)),
    }
    for name, sock in passed
]
report["second_call"] = len(systemd.listen_sockets())
payload = (json.dumps(report) + "\n").encode()
for _name, sock in passed:
    sock.settimeout(20)
    conn, _ = sock.accept()
    with conn:
        conn.sendall(payload)
"""


def start_activated(listen: list[str], argv: list[str], extra: list[str] | None = None) -> ManagedProcess:
    """``systemd-socket-activate -l ADDR... -- argv``: binds now, execs argv on the first
    connection with LISTEN_PID set to the child's own pid."""
    tool = require_tool(SOCKET_ACTIVATE, "systemd-socket-activate")
    cmd = [tool, *(arg for addr in listen for arg in ("-l", addr)), *(extra or [])]
    cmd += ["-E", f"PYTHONPATH={REPO / 'src'}", "--", *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return ManagedProcess(cmd, env)


def connect_when_listening(
    host: str, port: int, proc: ManagedProcess, timeout: float = 10.0
) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, port), timeout=10)
        except OSError:
            if not proc.running() or time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {host}:{port}:\n{proc.output()}") from None
            time.sleep(0.02)


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@linux_only
def test_child_receives_and_accepts_on_the_activated_socket() -> None:
    port = free_port()
    proc = start_activated(
        [f"127.0.0.1:{port}"], [sys.executable, "-c", ACTIVATED_CHILD], extra=["--fdname=http"]
    )
    try:
        with connect_when_listening("127.0.0.1", port, proc) as conn:
            report = json.loads(read_line(conn))
        assert proc.proc.wait(20) == 0, proc.output()
    finally:
        proc.cleanup()
    assert report["listen_pid"] == str(report["pid"])
    assert report["foreign_pid_result"] == 0
    assert report["sockets"] == [
        {"name": "http", "fd": 3, "inheritable": False, "address": ["127.0.0.1", port]}
    ]
    assert report["env_left"] == []
    assert report["second_call"] == 0


@linux_only
def test_several_sockets_arrive_in_order_with_their_names() -> None:
    ports = [free_port(), free_port()]
    listen = [f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"]
    hosts = ["127.0.0.1", "127.0.0.1"]
    if ipv6_loopback():
        listen[1], hosts[1] = f"[::1]:{ports[1]}", "::1"
    proc = start_activated(listen, [sys.executable, "-c", ACTIVATED_CHILD], extra=["--fdname=main:extra"])
    try:
        reports = []
        for host, port in zip(hosts, ports, strict=True):
            with connect_when_listening(host, port, proc) as conn:
                reports.append(json.loads(read_line(conn)))
        assert proc.proc.wait(20) == 0, proc.output()
    finally:
        proc.cleanup()
    assert reports[0] == reports[1]
    assert [(s["name"], s["fd"], s["address"]) for s in reports[0]["sockets"]] == [
        ("main", 3, [hosts[0], ports[0]]),
        ("extra", 4, [hosts[1], ports[1]]),
    ]


# Runs in a plain child: puts a non-socket, or nothing, where LISTEN_FDS points.
BAD_DESCRIPTOR_CHILD = r"""
import json, os
from rolebroker import systemd

def attempt():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
    try:
        return len(systemd.listen_sockets(environ=env))
    except ValueError as exc:
        return str(exc)

os.closerange(3, 256)
results = {"closed": attempt()}
read_end, write_end = os.pipe()
os.dup2(read_end, 3)
results["pipe"] = attempt()
print(json.dumps(results))
"""


@linux_only
def test_listen_sockets_refuses_descriptors_that_are_not_sockets() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BAD_DESCRIPTOR_CHILD],
        env={"PYTHONPATH": str(REPO / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = json.loads(done.stdout)
    assert "fd 3, but it is not open" in results["closed"]
    assert "fd 3, but it is not a socket" in results["pipe"]


# --- the daemon itself under socket activation ---------------------------------------------


def loopback_hosts() -> list[str]:
    """The addresses rolebroker.socket listens on, as far as this machine has them."""
    return ["127.0.0.1", "::1"] if ipv6_loopback() else ["127.0.0.1"]


def http_get(host: str, port: int, path: str, proc: ManagedProcess) -> bytes:
    with connect_when_listening(host, port, proc) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    return response


@contextlib.contextmanager
def activated_daemon(
    workdir: Path, hosts: list[str] | None = None
) -> Iterator[tuple[ManagedProcess, socket.socket]]:
    """``rolebroker serve`` as systemd runs it: the sockets of rolebroker.socket (127.0.0.1
    and [::1] on one port) passed on fd 3 and 4, NOTIFY_SOCKET bound by the test. Yields once
    the daemon answered /healthz on every passed socket."""
    from tests.support.daemon import AwsHome

    home = AwsHome(workdir / "home")
    home.write()
    notify_path = workdir / "notify"
    port = free_port()
    hosts = loopback_hosts() if hosts is None else hosts
    listen = [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]
    env_args = [f"-E{name}={value}" for name, value in home.env().items() if name != "PATH"]
    env_args.append(f"-ENOTIFY_SOCKET={notify_path}")
    with datagram_listener(str(notify_path)) as receiver:
        proc = start_activated(listen, [sys.executable, "-m", "rolebroker", "serve"], extra=env_args)
        try:
            for host in hosts:
                response = http_get(host, port, "/healthz", proc)
                assert response.startswith(b"HTTP/1.1 200"), (host, response)
            yield proc, receiver
        finally:
            proc.cleanup()


@linux_only
def test_daemon_serves_both_passed_loopback_sockets_and_proves_each_address(short_dir: Path) -> None:
    """Both sockets of rolebroker.socket are served, and each proof names the address the
    connection arrived on (what the CLI checks against the address it dialled)."""
    from rolebroker.authtoken import listener_proof, read_token

    with activated_daemon(short_dir) as (proc, receiver):
        assert receiver.recv(65536).startswith(b"READY=1"), proc.output()
        token = read_token(short_dir / "home" / "run" / "rolebroker" / "token")
        port = int(proc.argv[2].rsplit(":", 1)[1])
        nonce = bytes(range(32))
        for host in loopback_hosts():
            response = http_get(host, port, f"/proof?nonce={nonce.hex()}", proc)
            body = json.loads(response.split(b"\r\n\r\n", 1)[1])
            assert body == {"proof": listener_proof(token, nonce, host, port)}, host
        assert "passed by the service manager" in proc.output()


@linux_only
def test_daemon_on_a_passed_socket_reports_ready_and_reloads(short_dir: Path) -> None:
    """READY=1 once it answers; RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP."""
    with activated_daemon(short_dir) as (proc, receiver):
        assert receiver.recv(65536).startswith(b"READY=1"), proc.output()
        proc.signal(signal.SIGHUP)
        reloading = receiver.recv(65536).decode()
        assert re.match(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading), reloading
        assert receiver.recv(65536).startswith(b"READY=1")
        assert proc.running()


@linux_only
def test_daemon_on_a_passed_socket_reports_stopping(short_dir: Path) -> None:
    with activated_daemon(short_dir) as (proc, receiver):
        assert receiver.recv(65536).startswith(b"READY=1"), proc.output()
        receiver.settimeout(5)
        proc.signal(signal.SIGTERM)
        assert receiver.recv(65536) == b"STOPPING=1", proc.output()
        assert proc.proc.wait(20) in (0, -signal.SIGTERM), proc.output()


# --- unit files ----------------------------------------------------------------------------


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; keys may repeat in unit files."""
    entries, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def runnable_copy(unit: Path, dest: Path) -> Path:
    """A copy whose ExecStart names an executable that exists here, so that verify checks
    every other directive instead of stopping at a missing ~/.local/bin/rolebroker."""
    lines = []
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            program, _, args = line.removeprefix("ExecStart=").partition(" ")
            if not os.access(program, os.X_OK):
                line = f"ExecStart={sys.executable} {args}"
        lines.append(line)
    copy = dest / unit.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


def verify(units: list[Path], *, user: bool, workdir: Path) -> tuple[int, str]:
    tool = require_tool(SYSTEMD_ANALYZE, "systemd-analyze")
    runtime = workdir / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "XDG_RUNTIME_DIR": str(runtime),  # the user manager's runtime dir, created on demand
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "SYSTEMD_LOG_LEVEL": "info",
    }
    cmd = [tool, *(["--user"] if user else []), "verify", "--man=no", *map(str, units)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


USER_UNITS = ["rolebroker.service", "rolebroker.socket", "rolebroker-containers.socket"]


def port80_unit(dest: Path) -> Path:
    """The system unit `rolebroker port80 --apply` writes (for uid 1000)."""
    from rolebroker.cli.port80_setup import systemd_unit, unit_name

    dest.mkdir(exist_ok=True)
    path = dest / unit_name(1000)
    path.write_text(systemd_unit(1000))
    return path


@linux_only
@pytest.mark.parametrize("user", [True, False], ids=["user units", "port80 system unit"])
def test_systemd_analyze_accepts_the_units(user: bool, tmp_path: Path) -> None:
    sources = [UNITS / name for name in USER_UNITS] if user else [port80_unit(tmp_path / "generated")]
    units = [runnable_copy(source, tmp_path) for source in sources]
    status, output = verify(units, user=user, workdir=tmp_path)
    assert status == 0, output
    complaints = [line for line in output.splitlines() if line.strip()]
    assert complaints == [], "\n".join(complaints)


@linux_only
def test_systemd_analyze_check_is_not_vacuous(tmp_path: Path) -> None:
    """The same check reports an unknown directive, so a clean run above means something."""
    unit = runnable_copy(UNITS / "rolebroker.service", tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nNotADirective=yes\n", 1))
    shutil.copy(UNITS / "rolebroker.socket", tmp_path)
    status, output = verify([unit, tmp_path / "rolebroker.socket"], user=True, workdir=tmp_path)
    assert "Unknown key" in output and "NotADirective" in output, (status, output)


def test_units_keep_their_contract() -> None:
    service = unit_entries(UNITS / "rolebroker.service")
    assert ("Service", "Type", "notify") in service
    assert ("Service", "ExecStart", "%h/.local/bin/rolebroker serve") in service
    assert ("Service", "ExecReload", "/bin/kill -HUP $MAINPID") in service
    assert ("Service", "Restart", "on-failure") in service
    assert ("Service", "SyslogIdentifier", "rolebroker") in service
    assert ("Service", "UMask", "0077") in service

    assert ("Service", "RestartPreventExitStatus", "2 78") in service  # 78: port held by someone else

    socket_unit = unit_entries(UNITS / "rolebroker.socket")
    assert [v for _s, k, v in socket_unit if k == "ListenStream"] == ["127.0.0.1:9911", "[::1]:9911"]
    assert ("Socket", "BindIPv6Only", "ipv6-only") in socket_unit

    # The container port, held for the same service from login on, even before the root
    # set-up's address exists; the daemon knows it by name and never serves it as loopback.
    containers_unit = unit_entries(UNITS / "rolebroker-containers.socket")
    assert [v for _s, k, v in containers_unit if k == "ListenStream"] == ["169.254.170.2:9912"]
    for entry in [
        ("Socket", "FreeBind", "yes"),
        ("Socket", "FileDescriptorName", "containers"),
        ("Socket", "Service", "rolebroker.service"),
        ("Socket", "Accept", "no"),
        ("Install", "WantedBy", "sockets.target"),
    ]:
        assert entry in containers_unit, entry

    # The relay units for port 80 are gone: a relay hides the caller's uid (ForeignUser).
    assert not list(UNITS.glob("rolebroker-http*"))


# --- launchd -------------------------------------------------------------------------------


def test_launchd_plist_loads_with_the_expected_keys() -> None:
    home = "/Users/alice"
    text = PLIST.read_text()
    assert "__HOME__" in text
    readme = (REPO / "launchd" / "README.md").read_text()
    assert "s#__HOME__#$HOME#g" in readme, "the README's install command fills in the placeholder"

    agent = plistlib.loads(text.replace("__HOME__", home).encode())
    assert agent["Label"] == "dev.rolebroker"
    assert agent["ProgramArguments"] == [f"{home}/.local/bin/rolebroker", "serve"]
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False, "Crashed": True}
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == f"{home}/Library/Logs/rolebroker.log"
    assert agent["Umask"] == 0o077
    assert all(p.startswith("/") for p in agent["EnvironmentVariables"]["PATH"].split(":"))
    # launchd holds both loopback families on the port; the daemon asks for "Listeners".
    listeners = agent["Sockets"]["Listeners"]
    assert [(s["SockNodeName"], s["SockServiceName"], s["SockFamily"]) for s in listeners] == [
        ("127.0.0.1", "9911", "IPv4"),
        ("::1", "9911", "IPv6"),
    ]


@linux_only
@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_daemon_given_only_127_0_0_1_holds_the_ipv6_loopback_itself(short_dir: Path) -> None:
    """An older socket unit with one ListenStream: the daemon binds [::1] on the same port, so
    no other user can answer clients that resolve localhost to ::1."""
    with activated_daemon(short_dir, hosts=["127.0.0.1"]) as (proc, receiver):
        assert receiver.recv(65536).startswith(b"READY=1"), proc.output()
        port = int(proc.argv[2].rsplit(":", 1)[1])
        assert http_get("::1", port, "/healthz", proc).startswith(b"HTTP/1.1 200")
