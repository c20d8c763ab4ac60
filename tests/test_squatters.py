"""Another local Unix user must get neither the token nor credentials.

End to end: a second uid (``setpriv --reuid 4242``, no passwd entry needed) binds the
daemon's port on loopback; the real CLI must refuse to send it the token, the real daemon
must name it and exit 78, and while the daemon runs it must hold both loopback families.
Plus the token rotation, the listener proof against a relay, the discovery file, and unit
tests of the proof and of the /proc parsing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rolebroker import discovery, procfs
from rolebroker.authtoken import (
    NONCE_BYTES,
    PROOF_LABEL,
    TokenStore,
    canonical_address,
    listener_proof,
    load_or_create_token,
    parse_nonce,
    proof_is_valid,
)
from tests.conftest import StartDaemon
from tests.support.cli import cli_env, run_cli
from tests.support.daemon import AwsHome, Daemon
from tests.support.procs import ManagedProcess, free_port, ipv6_loopback

OTHER_UID = 4242
SETPRIV = shutil.which("setpriv")
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SQUATTED = "is not rolebroker (it could not prove it knows the token); another user may be squatting the port"


needs_other_uid = pytest.mark.skipif(
    SETPRIV is None or os.geteuid() != 0 or not sys.platform.startswith("linux"),
    reason="needs root and setpriv (util-linux) to act as another user",
)
needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")

# The squatter: an HTTP server that answers like rolebroker would (healthz ok, fake keys)
# but cannot know the token; it prints every request it receives, headers and body.
SQUATTER = r"""
import http.server, json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("latin-1") if length else ""
        print("REQUEST", self.command, self.path, json.dumps(dict(self.headers.items())), body, flush=True)
        if self.path == "/healthz":
            reply = {"status": "ok"}
        elif self.path.startswith("/proof"):
            reply = {"proof": "0" * 64}
        else:
            reply = {"AccessKeyId": "ASIASQUATTERFAKE0000", "SecretAccessKey": "fake", "Token": "fake",
                     "Expiration": "2099-01-01T00:00:00Z", "profiles": []}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    allow_reuse_address = False

server = Server((host, port), Handler)
print("LISTENING", flush=True)
server.serve_forever()
"""

# Another user trying to bind host:port; prints the errno name or BOUND.
TRY_BIND = r"""
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    sock.bind((host, port))
    sock.listen()
    print("BOUND")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


def as_other_user(*argv: str) -> list[str]:
    assert SETPRIV is not None
    return [SETPRIV, "--reuid", str(OTHER_UID), "--regid", str(OTHER_UID), "--clear-groups", *argv]


@contextlib.contextmanager
def squatter(host: str, port: int) -> Iterator[ManagedProcess]:
    """The fake listener, as uid 4242, on host:port; yields once it listens."""
    proc = ManagedProcess(
        as_other_user(SYSTEM_PYTHON, "-c", SQUATTER, host, str(port)),
        {"PATH": "/usr/bin:/bin"},
        cwd=Path("/"),
    )
    try:
        deadline = time.monotonic() + 15
        while "LISTENING" not in proc.output():
            assert proc.running() and time.monotonic() < deadline, proc.output()
            time.sleep(0.02)
        yield proc
    finally:
        proc.cleanup()


def home_with_token(tmp_path: Path) -> tuple[AwsHome, str]:
    """A user whose daemon ran before (its token file is there) but is stopped now."""
    home = AwsHome(tmp_path / "home")
    home.write()
    return home, load_or_create_token(home.token_file)


# -- the CLI never sends the token to a squatter ------------------------------------------------

SENDS_TOKEN = [
    ("status",),
    ("creds", "prod"),
    ("env", "prod"),
    ("exec", "prod", "--", "true"),
    ("reload",),
    ("mfa", "prod", "123456"),
    ("token", "--rotate"),
]


def assert_refused_without_token(
    host: str, tmp_path: Path, commands: list[tuple[str, ...]] = SENDS_TOKEN
) -> None:
    home, token = home_with_token(tmp_path)
    port = free_port()
    env = {**home.env(), "ROLEBROKER_PORT": str(port)}
    with squatter(host, port) as fake:
        for args in commands:
            result = run_cli(*args, env=env, timeout=30)
            text = result.stdout + result.stderr
            assert result.returncode != 0, (args, text)
            assert f"the process listening on 127.0.0.1:{port} {SQUATTED}" in text, (args, text)
            assert f"uid {OTHER_UID}" in text and f"pid {fake.pid}" in text, (args, text)
            assert "ASIASQUATTERFAKE" not in text and "Traceback" not in text, (args, text)
        doctor = run_cli("doctor", "prod", env=env, timeout=30)
        received = fake.output()
    assert doctor.returncode == 1, doctor.stdout
    assert "could not prove it knows the token" in doctor.stdout, doctor.stdout
    assert "why: another user may be squatting the port" in doctor.stdout, doctor.stdout
    assert received.count("REQUEST GET /proof?nonce=") >= len(commands), received
    assert token not in received, "the squatter received the token"
    assert "Authorization" not in received
    assert home.token_file.read_text() == token, "a refused rotate must not change the token"


@needs_other_uid
def test_cli_refuses_a_squatter_on_127_0_0_1_and_never_sends_it_the_token(tmp_path: Path) -> None:
    assert_refused_without_token("127.0.0.1", tmp_path)


@needs_other_uid
def test_squatter_is_refused_even_on_a_wildcard_address(tmp_path: Path) -> None:
    assert_refused_without_token("0.0.0.0", tmp_path, [("creds", "prod")])


# -- the daemon holds both loopback families ----------------------------------------------------


@needs_other_uid
@needs_ipv6
def test_another_user_cannot_bind_either_loopback_family_while_the_daemon_runs(daemon: Daemon) -> None:
    for host in ("::1", "127.0.0.1"):
        done = subprocess.run(
            as_other_user(SYSTEM_PYTHON, "-c", TRY_BIND, host, str(daemon.port)),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert done.stdout.strip() == "EADDRINUSE", (host, done.stdout, done.stderr)
    # and the daemon answers on both
    for url in (f"http://[::1]:{daemon.port}/healthz", f"{daemon.base_url}/healthz"):
        assert httpx.get(url, timeout=5).status_code == 200


# -- the daemon names who holds its port and does not loop ---------------------------------------


def serve_until_exit(home: AwsHome, port: int) -> tuple[int, str]:
    proc = ManagedProcess(
        [sys.executable, "-m", "rolebroker", "serve", "--port", str(port)], home.env(), cwd=home.root
    )
    try:
        status = proc.proc.wait(30)
        return status, proc.output()
    finally:
        proc.cleanup()


@needs_other_uid
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_daemon_on_a_squatted_port_names_the_holder_and_exits_78(host: str, tmp_path: Path) -> None:
    home, _token = home_with_token(tmp_path)
    port = free_port()
    with squatter(host, port) as fake:
        status, output = serve_until_exit(home, port)
    assert status == 78, output
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert f"cannot listen on {shown}: the port is already taken" in output, output
    assert f"uid {OTHER_UID}" in output and f"pid {fake.pid}" in output, output
    assert "--port" in output and "ROLEBROKER_PORT" in output and "config.toml" in output
    assert "Errno 98" not in output and "Traceback" not in output, output
    assert not discovery.discovery_file(home.env()).exists()


# -- token rotation ---------------------------------------------------------------------------


def test_token_rotate_refuses_the_old_token_at_once_and_names_its_users(
    daemon: Daemon, tmp_path: Path
) -> None:
    old = daemon.token
    assert daemon.get("/creds/prod", token=old).status_code == 200
    holder = ManagedProcess(
        ["sleep", "60"], {"AWS_CONTAINER_AUTHORIZATION_TOKEN": old, "PATH": "/usr/bin:/bin"}
    )
    try:
        result = run_cli("token", "--rotate", env=cli_env(daemon))
    finally:
        holder.cleanup()
    assert result.returncode == 0, result.stderr
    new = daemon.token
    assert new != old and len(new) >= 43 and new.strip() == new
    assert stat.S_IMODE(daemon.home.token_file.stat().st_mode) == 0o600
    refused = daemon.get("/creds/prod", token=old)
    assert refused.status_code == 403 and refused.json()["code"] == "InvalidToken"
    assert daemon.get("/creds/prod", token=new).status_code == 200
    assert f"pid {holder.pid}: sleep 60" in result.stderr
    assert 'eval "$(rolebroker env PROFILE)"' in result.stderr
    assert old not in result.stdout + result.stderr and new not in result.stdout + result.stderr
    assert old not in daemon.output() and new not in daemon.output()
    # The CLI keeps working with the new file: proof and token agree again.
    assert run_cli("status", env=cli_env(daemon)).returncode == 0


def test_token_rotate_without_a_daemon_rewrites_the_file(tmp_path: Path) -> None:
    home, old = home_with_token(tmp_path)
    result = run_cli("token", "--rotate", env={**home.env(), "ROLEBROKER_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stderr
    new = home.token_file.read_bytes()
    assert new.decode() != old and new.strip() == new and len(new) >= 43
    assert stat.S_IMODE(home.token_file.stat().st_mode) == 0o600

    home.token_file.unlink()  # never ran at all: the file is created
    again = run_cli("token", "--rotate", env={**home.env(), "ROLEBROKER_PORT": str(free_port())})
    assert again.returncode == 0, again.stderr
    assert len(home.token_file.read_bytes()) >= 43
    assert stat.S_IMODE(home.token_file.stat().st_mode) == 0o600


# -- the proof is bound to the address the client dialled ---------------------------------------


@contextlib.contextmanager
def tcp_relay(target_port: int) -> Iterator[tuple[int, list[bytes]]]:
    """A transparent TCP relay on 127.0.0.1:A to the real daemon on 127.0.0.1:B, recording
    what clients send: the strongest squatter that does not know the token."""
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def pump(source: socket.socket, sink: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if record:
                    received.append(data)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
            for args in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=pump, args=args, daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), received
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_relayed_proof_from_the_real_daemon_is_refused(daemon: Daemon) -> None:
    with tcp_relay(daemon.port) as (relay_port, received):
        env = {**cli_env(daemon), "ROLEBROKER_PORT": str(relay_port)}
        for args in (("creds", "prod"), ("status",)):
            result = run_cli(*args, env=env, timeout=30)
            assert result.returncode != 0, result.stdout
            assert f"the process listening on 127.0.0.1:{relay_port} is not rolebroker" in result.stderr
    sent = b"".join(received)
    assert b"/proof?nonce=" in sent, "the relay reached the real daemon"
    assert daemon.token.encode() not in sent and b"Authorization" not in sent


# -- discovery file ---------------------------------------------------------------------------


def test_discovery_file_is_written_used_and_removed(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    path = discovery.discovery_file(daemon.home.env())
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, daemon.safe_output()
        time.sleep(0.02)
    assert path == daemon.home.root / "run" / "rolebroker" / "daemon.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = json.loads(path.read_text())
    assert content["port"] == daemon.port
    assert content["pid"] == daemon.process.pid
    assert content["token_file"] == str(daemon.home.token_file)
    assert "127.0.0.1" in content["addresses"]
    assert daemon.token not in path.read_text()

    # No --port, ROLEBROKER_PORT or config.toml: the CLI finds the daemon's (random) port.
    result = run_cli("status", "--json", env=daemon.home.env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["listen"].endswith(f":{daemon.port}")

    daemon.process.signal(signal.SIGTERM)
    daemon.process.proc.wait(20)
    assert not path.exists(), daemon.safe_output()


def test_a_token_file_mismatch_names_the_daemons_token_file(daemon: Daemon, tmp_path: Path) -> None:
    other = tmp_path / "other-token"
    other.write_text("x" * 43)
    result = run_cli("creds", "prod", "--token-file", str(other), env=cli_env(daemon))
    assert result.returncode != 0
    assert f"token file {daemon.home.token_file}" in result.stderr, result.stderr
    assert f"--token-file {daemon.home.token_file}" in result.stderr
    assert not daemon.leaked(result.stderr)


# -- unit: the proof ----------------------------------------------------------------------------


def test_proof_is_hmac_sha256_of_label_nonce_and_address() -> None:
    import hashlib
    import hmac

    nonce = bytes(range(NONCE_BYTES))
    expected = hmac.new(b"tok", PROOF_LABEL + nonce + b"127.0.0.1:9911", hashlib.sha256).hexdigest()
    assert listener_proof("tok", nonce, "127.0.0.1", 9911) == expected
    assert proof_is_valid("tok", nonce, "127.0.0.1", 9911, expected)


def test_proof_fails_for_another_token_nonce_port_or_host() -> None:
    nonce = os.urandom(NONCE_BYTES)
    answer = listener_proof("token-a", nonce, "127.0.0.1", 9911)
    assert not proof_is_valid("token-b", nonce, "127.0.0.1", 9911, answer)
    assert not proof_is_valid("token-a", os.urandom(NONCE_BYTES), "127.0.0.1", 9911, answer)
    assert not proof_is_valid("token-a", nonce, "127.0.0.1", 9912, answer)  # a relay to another port
    assert not proof_is_valid("token-a", nonce, "::1", 9911, answer)
    for junk in (None, 5, "", "0" * 64, answer.upper(), answer + "0", answer[:-1]):
        assert not proof_is_valid("token-a", nonce, "127.0.0.1", 9911, junk)


def test_addresses_are_canonical_on_both_ends() -> None:
    assert canonical_address("[::1]", 1) == canonical_address("::1", 1) == b"::1:1"
    assert canonical_address("::ffff:127.0.0.1", 9911) == b"127.0.0.1:9911"
    assert canonical_address("0:0:0:0:0:0:0:1", 5) == b"::1:5"


@pytest.mark.parametrize(
    "text", [None, "", "ab", "0" * 63, "0" * 65, "g" * 64, "A" * 64, " " + "0" * 63, "0" * 10_000]
)
def test_malformed_nonces_are_refused(text: str | None) -> None:
    assert parse_nonce(text) is None


async def test_proof_route_is_open_bounded_and_answers_for_the_arrival_address(tmp_path: Path) -> None:
    from rolebroker.broker import Broker
    from rolebroker.config import Settings
    from rolebroker.server import create_app

    store = TokenStore(load_or_create_token(tmp_path / "token"), tmp_path / "token")
    app = create_app(Broker(Settings(token_file=tmp_path / "token")), store)
    nonce = os.urandom(NONCE_BYTES)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9911") as client:
        reply = await client.get(f"/proof?nonce={nonce.hex()}")
        assert reply.status_code == 200
        assert reply.json() == {"proof": listener_proof(store.current, nonce, "127.0.0.1", 9911)}
        assert store.current not in reply.text
        for bad in ("", "?nonce=abc", "?nonce=" + "0" * 65, "?nonce=" + "z" * 64, "?nonce=" + "0" * 10_000):
            refused = await client.get("/proof" + bad)
            assert refused.status_code == 400 and refused.json()["code"] == "InvalidNonce", bad

        # rotation through the route: the old token is refused by the very next request
        old = store.current
        assert (await client.post("/token/rotate", headers={"Authorization": old})).status_code == 200
        assert store.current != old and (tmp_path / "token").read_text() == store.current
        again = await client.post("/token/rotate", headers={"Authorization": old})
        assert again.status_code == 403 and again.json()["code"] == "InvalidToken"
        assert old not in again.text


def test_token_store_keeps_the_old_token_when_the_file_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "token"
    store = TokenStore(load_or_create_token(path), path)
    old = store.current
    (tmp_path / "dir").rename(tmp_path / "moved")
    (tmp_path / "dir").write_text("a file where the directory was")  # fails even for root
    with pytest.raises(OSError):
        store.rotate()
    assert store.current == old and store.matches(old)


# -- unit: /proc parsing -------------------------------------------------------------------------

TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:26B7 00000000:0000 0A 00000000:00000000 00:00000000 00000000  4242        0 777001 1 0
   1: 0100007F:26B7 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 777002 1 0
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777003 1 0
"""
TCP6_TABLE = (
    "  sl  local_address                         remote_address                        st tx_queue ...\n"
    "   0: 00000000000000000000000001000000:26B7 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000        0 777004 1 0\n"
)


@pytest.mark.skipif(sys.byteorder != "little", reason="sample tables were printed by a little-endian kernel")
def test_proc_net_tables_are_parsed() -> None:
    assert procfs.decode_address("0100007F:26B7") == ("127.0.0.1", 9911)
    assert procfs.decode_address("00000000000000000000000001000000:26B7") == ("::1", 9911)
    assert procfs.decode_address("0000000000000000FFFF00000100007F:0050") == ("::ffff:127.0.0.1", 80)
    found = procfs.parse_listeners(TCP_TABLE)
    assert [(s.host, s.port, s.uid, s.inode) for s in found] == [
        ("127.0.0.1", 9911, 4242, 777001),
        ("0.0.0.0", 22, 0, 777003),
    ]
    assert procfs.parse_listeners("header\ngarbage line\n  0: zz:zz 0 0A x x x 1 2 3\n") == []


def test_port_holders_are_found_through_fake_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(TCP_TABLE if sys.byteorder == "little" else TCP_TABLE.splitlines()[0])
    (proc / "net" / "tcp6").write_text(TCP6_TABLE if sys.byteorder == "little" else "")
    for pid, inode, argv in ((77, 777001, b"python3\0-m\0http.server\0"), (78, 1, b"bash\0")):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(argv)
        (proc / str(pid) / "fd" / "3").symlink_to(f"socket:[{inode}]")
    if sys.byteorder != "little":
        pytest.skip("sample tables were printed by a little-endian kernel")
    holders = procfs.listeners_on(9911, proc)
    assert [(h.host, h.uid, h.processes) for h in holders] == [
        ("127.0.0.1", 4242, (procfs.Process(77, "python3 -m http.server"),)),
        ("::1", 1000, ()),
    ]
    assert "127.0.0.1:9911 held by uid 4242" in holders[0].describe()
    assert "pid 77 (python3 -m http.server)" in holders[0].describe()
    assert "process not visible" in holders[1].describe()
    assert [h.host for h in procfs.holders_of("127.0.0.1", 9911, proc)] == ["127.0.0.1"]
    assert [h.host for h in procfs.holders_of("::1", 9911, proc)] == ["::1"]


def test_processes_exporting_a_value_are_found(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, environ in ((10, b"A=1\0TOKEN=secret\0"), (11, b"TOKEN=secret2\0"), (12, b"TOKEN=secre\0")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "environ").write_bytes(environ)
        (proc / str(pid) / "cmdline").write_bytes(b"bash\0")
    assert procfs.processes_exporting("TOKEN", "secret", proc) == [procfs.Process(10, "bash")]


def test_real_proc_shows_our_own_listener() -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        (held,) = procfs.listeners_on(port)
    assert (held.host, held.uid) == ("127.0.0.1", os.getuid())
    assert os.getpid() in [p.pid for p in held.processes]


def test_discovery_file_is_ignored_when_not_trustworthy(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    info = discovery.DaemonInfo(9999, ("127.0.0.1",), tmp_path / "token", os.getpid())
    discovery.write(path, info)
    assert discovery.read(path) == info
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text(json.dumps({**info.to_json(), "pid": 2**22 + 12345}))  # no such process
    assert discovery.read(path) is None
    for broken in ("{", "[]", json.dumps({**info.to_json(), "port": 0}), json.dumps({"port": "9911"})):
        path.write_text(broken)
        assert discovery.read(path) is None, broken
    link = tmp_path / "link.json"
    discovery.write(path, info)
    link.symlink_to(path)
    assert discovery.read(link) is None
    discovery.remove(path, os.getpid() + 1)  # not ours: kept
    assert path.exists()
    discovery.remove(path, os.getpid())
    assert not path.exists()


def test_self_bound_listeners_hold_both_families_as_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both loopback families on one port, and proto IPPROTO_TCP: asyncio sets TCP_NODELAY on
    accepted connections only then (without it a keep-alive request waited ~40 ms)."""
    from rolebroker.listeners import open_listeners

    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    listeners = open_listeners("127.0.0.1", 0)
    try:
        hosts = [host for host, _port in listeners.addresses]
        assert hosts == (["127.0.0.1", "::1"] if ipv6_loopback() else ["127.0.0.1"])
        assert len({port for _host, port in listeners.addresses}) == 1
        assert all(sock.proto == socket.IPPROTO_TCP for sock in listeners.sockets)
        assert not listeners.activated
    finally:
        for sock in listeners.sockets:
            sock.close()


def test_doctor_names_the_daemons_token_file_on_a_mismatch(daemon: Daemon, tmp_path: Path) -> None:
    other = tmp_path / "other-token"
    other.write_text("y" * 43)
    result = run_cli("doctor", "--token-file", str(other), env=cli_env(daemon))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"token file {daemon.home.token_file}" in result.stdout, result.stdout
    assert not daemon.leaked(result.stdout + result.stderr)
