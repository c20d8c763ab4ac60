"""Run an unmodified AWS client against moto inside a private network namespace.

Some clients (aws-sdk-js v2, hence Serverless Framework v3) cannot be pointed at a custom
endpoint from the environment. Inside a private mount+net+pid namespace we can make the
real AWS host names *be* moto instead:

- loopback is the only interface, so nothing can reach the internet or real AWS;
- a tiny DNS responder answers every A query with 127.0.0.1 (``resolv.conf`` is
  bind-mounted, which only this mount namespace sees);
- a TLS terminator on 127.0.0.1:443, with a throwaway CA the client trusts through
  ``NODE_EXTRA_CA_CERTS``, forwards the decrypted bytes to a plain-http moto server,
  Host header untouched (moto dispatches on it);
- the rolebroker daemon runs there too, so the client's only credentials come from it.

The outer side (:func:`run_serverless_in_namespace`) starts ``unshare`` with a hard
timeout; the inner side (``python -m tests.support.netns serverless ...``) does the work
and writes a JSON report of facts (never a secret) for the test to assert on. The inner
runner is PID 1 of its own pid namespace, so when it exits the kernel kills everything it
started, whatever state it was in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "tests" / "clients"
SERVICE_DIR = CLIENTS / "serverless-hello"
SERVERLESS_JS = CLIENTS / "node_modules" / "serverless" / "bin" / "serverless.js"

LOOPBACK = "127.0.0.1"
MOTO_PORT = 5000  # the namespace has its own port space: fixed ports cannot clash
DAEMON_PORT = 9911
MOTO_URL = f"http://{LOOPBACK}:{MOTO_PORT}"

BASE_ACCOUNT = "123456789012"  # moto's default account: where the base keys live
ROLE_ACCOUNT = "222222222222"  # where the assumed role lives: the stack must land here
ROLE_ARN = f"arn:aws:iam::{ROLE_ACCOUNT}:role/deployer"
PROFILE = "deploy"
REGION = "us-east-1"
STACK = "hello-dev"
FUNCTION = "hello-dev-hello"
# Set on the runner and every process it starts, so the outer test can prove none is left.
RUN_MARKER = "ROLEBROKER_NETNS_RUN"

BASE_KEY_ID = "AKIAIOSFODNN7NETNS01"
BASE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYnetnsBASE01"
INSPECTOR_KEY_ID = "AKIAIOSFODNN7INSPECT"  # the read-only checker's own fake keys
INSPECTOR_SECRET = "inspector-secret-not-a-credential-of-any-profile"

# What Serverless 3.40 (aws-sdk 2.1693) looked up for deploy + remove, per this harness's
# DNS log: sts.amazonaws.com, cloudformation.us-east-1, lambda.us-east-1,
# <deployment bucket>.s3.amazonaws.com (virtual-hosted S3) and api.ecr.us-east-1 (remove
# looks for the service's image repository). Regional S3/STS names are covered too.
# A name outside these fails the TLS handshake and shows up in the report's "sni" list.
TLS_HOSTS = (
    "amazonaws.com",
    "*.amazonaws.com",
    f"*.{REGION}.amazonaws.com",
    "*.s3.amazonaws.com",
    f"*.s3.{REGION}.amazonaws.com",
    f"*.ecr.{REGION}.amazonaws.com",
)

# Everything that would make Serverless v3 phone home, update itself or prompt.
SERVERLESS_QUIET_ENV = {
    "SLS_TELEMETRY_DISABLED": "1",
    "SLS_TRACKING_DISABLED": "1",
    "SLS_NOTIFICATIONS_MODE": "off",
    "SLS_DEPRECATION_DISABLE": "*",
    "SLS_DISABLE_AUTO_UPDATE": "1",
    "SLS_GEO_LOCATION": "us",
    "SLS_AWS_MONITORING_FREQUENCY": "500",  # poll stack events every 0.5 s, not 5 s
}


# --------------------------------------------------------------------------- DNS


def dns_answer(query: bytes, address: str = LOOPBACK) -> bytes | None:
    """The reply to one DNS query: every A record is ``address``; anything else gets an
    empty NOERROR (so AAAA lookups fall back to IPv4 at once). None for garbage."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        end += 1 + query[end]
    end += 1
    if end + 4 > len(query):
        return None
    question = query[12 : end + 4]
    qtype, qclass = struct.unpack("!HH", query[end : end + 4])
    answers = b""
    if qtype == 1 and qclass == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080  # QR, opcode+RD, AA, RA
    header = struct.pack("!HHHHHH", ident, reply_flags, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def dns_name(query: bytes) -> str:
    """The question name of a query, for the log of what the client looked up."""
    labels: list[str] = []
    pos = 12
    while pos < len(query) and query[pos] != 0:
        size = query[pos]
        labels.append(query[pos + 1 : pos + 1 + size].decode("ascii", "replace"))
        pos += 1 + size
    return ".".join(labels).lower()


class DnsResponder:
    """A UDP DNS server that resolves every name to loopback, so real AWS host names lead
    to the TLS terminator. Stdlib only; one thread; records the names it was asked."""

    def __init__(self, host: str = LOOPBACK, port: int = 53) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)

    def start(self) -> DnsResponder:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = dns_answer(query)
            if reply is not None:
                self.names.add(dns_name(query))
                with contextlib.suppress(OSError):
                    self._sock.sendto(reply, peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # what the client trusts (NODE_EXTRA_CA_CERTS)
    cert: Path  # leaf chain served by the terminator
    key: Path


def make_tls_files(directory: Path, hosts: Sequence[str] = TLS_HOSTS) -> TlsFiles:
    """A throwaway CA and a leaf for ``hosts``, valid for a day. Fresh keys per run, so no
    key ever trusted anywhere else exists; the CA is only handed to the client under test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rolebroker test CA (throwaway)")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class TlsStats:
    """What the terminator saw, for the report: host names and volumes, never payloads."""

    sni: set[str] = field(default_factory=set)
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: list[str] = field(default_factory=list)


class TlsTerminator:
    """TLS on ``host:port`` piped byte for byte to a plain-http upstream.

    No HTTP parsing: the Host header, keep-alive and request bodies of any size pass
    through untouched, one upstream connection per client connection. Runs an asyncio
    loop in its own thread so that many keep-alive connections are served concurrently.
    """

    def __init__(self, tls: TlsFiles, upstream_port: int, host: str = LOOPBACK, port: int = 443) -> None:
        self._tls, self._upstream_port, self._host, self._port = tls, upstream_port, host, port
        self.stats = TlsStats()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tls", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._tls.cert, self._tls.key)

        def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if name:
                self.stats.sni.add(name.lower())

        ctx.sni_callback = remember_sni
        return ctx

    def start(self) -> TlsTerminator:
        self._thread.start()
        self._ready.wait(10)
        if self._failure is not None:
            raise RuntimeError(f"TLS terminator failed to start: {self._failure!r}")
        if not self._ready.is_set():
            raise TimeoutError("TLS terminator did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(self._on_loop_error)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Failed handshakes and resets are expected noise; keep a short note, not a trace."""
        exc = context.get("exception")
        self.stats.errors.append(type(exc).__name__ if exc else str(context.get("message")))

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._handle, self._host, self._port, ssl=self._context(), backlog=256
            )
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            # Kept-alive connections would outlive the server: end them before the loop goes.
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """Track every connection, so that :meth:`stop` can end the kept-alive ones."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            await self._relay(client_r, client_w)
        finally:
            self._tasks.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(LOOPBACK, self._upstream_port)
        except OSError as exc:
            self.stats.errors.append(f"upstream: {type(exc).__name__}")
            client_w.close()
            return
        up = asyncio.create_task(self._pipe(client_r, upstream_w, "up", half_close=True))
        down = asyncio.create_task(self._pipe(upstream_r, client_w, "down", half_close=False))
        try:
            await down  # the response side ends the exchange (moto closes, or the client went away)
        finally:
            up.cancel()
            down.cancel()
            for writer in (upstream_w, client_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str, half_close: bool
    ) -> None:
        """Copy until EOF; a client EOF is passed on as a TCP half-close so that the
        upstream still answers the last request."""
        try:
            while chunk := await reader.read(256 * 1024):
                if direction == "up":
                    self.stats.bytes_up += len(chunk)
                else:
                    self.stats.bytes_down += len(chunk)
                writer.write(chunk)
                await writer.drain()
            if half_close and writer.can_write_eof():
                writer.write_eof()
            elif not half_close:
                writer.close()
        except (ConnectionError, ssl.SSLError, OSError):
            writer.close()

    def stop(self) -> None:
        if self._stopping is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)


# --------------------------------------------------------------------------- namespace


def loopback_up() -> None:
    """A new network namespace starts with ``lo`` down: bring it up (SIOCSIFFLAGS), without
    depending on iproute2."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def assert_private_namespace(outer_mount_ns: str) -> None:
    """Refuse to touch /etc/resolv.conf unless we really are in our own mount and network
    namespaces: run by mistake on a host, the bind mount would hijack its DNS."""
    if os.readlink("/proc/self/ns/mnt") == outer_mount_ns:
        raise RuntimeError("not in a private mount namespace (run me through unshare --mount)")
    interfaces = {name for _index, name in socket.if_nameindex()}
    if interfaces - {"lo"}:
        raise RuntimeError(f"not in a private network namespace: interfaces {sorted(interfaces)}")


def bind_resolv_conf(directory: Path, nameserver: str = LOOPBACK) -> None:
    """Point the C resolver (which Node's dns.lookup uses) at our responder. The bind
    mount lives in the private mount namespace only and disappears with it."""
    conf = directory / "resolv.conf"
    conf.write_text(f"nameserver {nameserver}\noptions timeout:1 attempts:2\n")
    target = Path("/etc/resolv.conf").resolve()
    if not target.exists():
        return  # no resolv.conf at all: glibc already defaults to a nameserver on loopback
    subprocess.run(["mount", "--bind", str(conf), str(target)], check=True, timeout=10)


# --------------------------------------------------------------------------- processes


class Child:
    """A long-running helper in its own process group, output in a log file, always
    killed with its whole group (also grandchildren) by :meth:`stop`."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def run_logged(
    argv: Sequence[str], env: Mapping[str, str], log: Path, timeout: float, cwd: Path | None = None
) -> int:
    """Run a command to completion with its output in ``log``; on timeout kill its group
    and return -9, so a hung client fails the test instead of hanging it."""
    child = Child(Path(argv[0]).name, argv, env, log, cwd)
    try:
        return child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with log.open("a") as out:
            out.write(f"\n[netns] killed after {timeout:.0f}s timeout\n")
        return -9
    finally:
        child.stop(grace=2)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a readiness check; connection errors just mean "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """GET on loopback, never through a proxy; errors come back as (status, body)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


# --------------------------------------------------------------------------- moto checks


def moto_client(service: str, account: str) -> Any:
    """A boto3 client on plain-http moto that looks into ``account`` (x-moto-account-id),
    with its own fake keys: it can observe the deploy without sharing its credentials."""
    import boto3
    from botocore.config import Config

    session: Any = boto3.session.Session(
        aws_access_key_id=INSPECTOR_KEY_ID,
        aws_secret_access_key=INSPECTOR_SECRET,
        region_name=REGION,
    )
    client = session.client(service, endpoint_url=MOTO_URL, config=Config(retries={"max_attempts": 2}))

    def pin_account(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = account

    client.meta.events.register("before-sign.*.*", pin_account)
    return client


def account_snapshot(account: str) -> dict[str, Any]:
    """Stacks (with status), Lambda functions and buckets of one account."""
    cfn, lam, s3 = (moto_client(s, account) for s in ("cloudformation", "lambda", "s3"))
    stacks = [
        {"name": s["StackName"], "status": s["StackStatus"]}
        for page in cfn.get_paginator("list_stacks").paginate()
        for s in page["StackSummaries"]
    ]
    functions = [f["FunctionName"] for f in lam.list_functions().get("Functions", [])]
    buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    return {"stacks": stacks, "functions": functions, "buckets": buckets}


def stack_details(account: str, stack: str = STACK) -> dict[str, Any]:
    """Status and resource types of one stack, or ``{"exists": False}``."""
    cfn = moto_client("cloudformation", account)
    try:
        found = cfn.describe_stacks(StackName=stack)["Stacks"]
    except Exception as exc:  # botocore ClientError "Stack ... does not exist"
        return {"exists": False, "error": type(exc).__name__}
    if not found:
        return {"exists": False}
    resources = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    return {
        "exists": True,
        "status": found[0]["StackStatus"],
        "resources": sorted({r["ResourceType"] for r in resources}),
    }


def function_details(account: str, name: str = FUNCTION) -> dict[str, Any]:
    """Whether the function exists in ``account``, with the ARN that names its account."""
    lam = moto_client("lambda", account)
    try:
        config = lam.get_function(FunctionName=name)["Configuration"]
    except Exception as exc:  # ResourceNotFoundException
        return {"exists": False, "error": type(exc).__name__}
    return {"exists": True, "runtime": config.get("Runtime"), "arn": config.get("FunctionArn")}


# --------------------------------------------------------------------------- the run


@dataclass
class Secrets:
    """Every secret of the run, so logs can be scanned and masked. Never serialised."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, value: str) -> None:
        if value:
            self.values[kind] = value

    def leaks(self, text: str) -> list[str]:
        return sorted(kind for kind, value in self.values.items() if value in text)

    def mask(self, text: str) -> str:
        for kind, value in self.values.items():
            text = text.replace(value, f"<{kind}>")
        return text


@dataclass
class Workspace:
    """Files of one run, all under the directory the outer test owns."""

    root: Path

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def log(self, name: str) -> Path:
        return self.path("logs", f"{name}.log")

    def setup(self) -> None:
        for sub in ("logs", "daemon-home/.aws", "daemon-home/run", "client-home", "tls"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        self.path("daemon-home", "run").chmod(0o700)


def run_marker(ws: Workspace) -> dict[str, str]:
    """The env var that tags every process of this run (see :func:`leftover_processes`)."""
    return {RUN_MARKER: os.environ.get(RUN_MARKER, str(ws.root))}


def daemon_env(ws: Workspace) -> dict[str, str]:
    """A cross-account profile (base keys in 123456789012, role in 222222222222) in a HOME
    of its own, STS pointed at plain-http moto, the token file we pre-created."""
    home = ws.path("daemon-home")
    home.joinpath(".aws", "config").write_text(
        f"[profile base]\nregion = {REGION}\n\n"
        f"[profile {PROFILE}]\nrole_arn = {ROLE_ARN}\nsource_profile = base\nregion = {REGION}\n"
    )
    creds = home.joinpath(".aws", "credentials")
    creds.touch(mode=0o600)
    creds.write_text(f"[base]\naws_access_key_id = {BASE_KEY_ID}\naws_secret_access_key = {BASE_SECRET}\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        "AWS_ENDPOINT_URL_STS": MOTO_URL,
        "AWS_EC2_METADATA_DISABLED": "true",
        "ROLEBROKER_TOKEN_FILE": str(home / "run" / "token"),
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONUNBUFFERED": "1",
        **run_marker(ws),
    }


def serverless_env(ws: Workspace, token: str, tls: TlsFiles, node: str) -> dict[str, str]:
    """Nothing but the container endpoint can supply credentials: no profile, no keys, an
    empty HOME (no ~/.aws), no AWS_SDK_LOAD_CONFIG, IMDS disabled."""
    return {
        "PATH": f"{Path(node).parent}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(ws.path("client-home")),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://{LOOPBACK}:{DAEMON_PORT}/creds/{PROFILE}",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NODE_EXTRA_CA_CERTS": str(tls.ca_cert),
        **SERVERLESS_QUIET_ENV,
        **run_marker(ws),
    }


@dataclass
class Report:
    """The JSON the outer test asserts on: facts and masked log tails, no secret."""

    data: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.data.setdefault("timings", {})[step] = round(time.monotonic() - start, 2)


def daemon_profile_status(token: str) -> dict[str, Any]:
    """The daemon's own view of the profile (/status): was it asked, how many STS calls."""
    status, body = http_get(f"http://{LOOPBACK}:{DAEMON_PORT}/status", {"Authorization": token})
    if status != 200:
        return {"http_status": status}
    rows = json.loads(body).get("profiles", [])
    row: dict[str, Any] = next((r for r in rows if r.get("name") == PROFILE), {})
    keep = ("state", "last_used", "sts_calls", "role_arn", "last_error", "cached")
    return {k: row.get(k) for k in keep}


def fetch_served_secrets(token: str, found: Secrets) -> dict[str, Any]:
    """Ask the daemon once, as the client did, to learn the secrets it hands out (the same
    cached credentials serverless got, as long as ``sts_calls`` did not move)."""
    status, body = http_get(f"http://{LOOPBACK}:{DAEMON_PORT}/creds/{PROFILE}", {"Authorization": token})
    if status != 200:
        return {"http_status": status}
    creds = json.loads(body)
    found.add("served SecretAccessKey", creds.get("SecretAccessKey", ""))
    found.add("served Token", creds.get("Token", ""))
    return {"http_status": status, "keys": sorted(creds), "expiration": creds.get("Expiration")}


@dataclass
class Services:
    """What runs inside the namespace for the client under test."""

    tls: TlsFiles
    dns: DnsResponder
    terminator: TlsTerminator
    daemon: Child


def start_services(ws: Workspace, stack: contextlib.ExitStack) -> Services:
    """Loopback, DNS, TLS, moto and the daemon; each is registered on ``stack`` for
    stopping the moment it exists, so a failure half-way leaves nothing running."""
    loopback_up()
    bind_resolv_conf(ws.path("tls"))
    tls = make_tls_files(ws.path("tls"))
    moto_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **run_marker(ws)}
    moto_argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(MOTO_PORT)]
    stack.callback(Child("moto", moto_argv, moto_env, ws.log("moto")).stop)
    dns = DnsResponder().start()
    stack.callback(dns.stop)
    terminator = TlsTerminator(tls, MOTO_PORT).start()
    stack.callback(terminator.stop)
    daemon_argv = [sys.executable, "-m", "rolebroker", "serve", "--host", LOOPBACK]
    daemon_argv += ["--port", str(DAEMON_PORT), "--refresh-before", "300"]
    daemon = Child("daemon", daemon_argv, daemon_env(ws), ws.log("daemon"), cwd=REPO)
    stack.callback(daemon.stop)
    wait_until(lambda: http_get(f"{MOTO_URL}/moto-api/", timeout=2)[0] == 200, 60, "moto")
    healthz = f"http://{LOOPBACK}:{DAEMON_PORT}/healthz"
    wait_until(lambda: daemon.running() and http_get(healthz, timeout=1)[0] == 200, 30, "daemon")
    return Services(tls, dns, terminator, daemon)


def warm_moto() -> None:
    """moto imports each service lazily (CloudFormation pulls in cfn-lint): pay for that
    here, read-only, rather than inside the 1 s credential and request timeouts of the
    client. STS first, so that the daemon's cold AssumeRole is quick too."""
    moto_client("sts", BASE_ACCOUNT).get_caller_identity()
    moto_client("cloudformation", BASE_ACCOUNT).list_stacks()
    moto_client("lambda", BASE_ACCOUNT).list_functions()


def record_network(services: Services, data: dict[str, Any]) -> None:
    """What the client looked up and connected to: proves it stayed on AWS names."""
    stats = services.terminator.stats
    data["dns_names"] = sorted(services.dns.names)
    data["tls"] = {
        "sni": sorted(stats.sni),
        "connections": stats.connections,
        "bytes_up": stats.bytes_up,
        "bytes_down": stats.bytes_down,
        "errors": sorted(set(stats.errors)),
    }


def prepare_run(ws: Workspace, found: Secrets) -> tuple[str, Path]:
    """Token file (pre-created, 0600, no trailing newline: a newline crashes aws-sdk v2)
    and a copy of the service, so serverless writes its .serverless/ outside the tree."""
    ws.setup()
    found.add("base secret key", BASE_SECRET)
    token = secrets.token_urlsafe(32)
    found.add("auth token", token)
    token_file = ws.path("daemon-home", "run", "token")
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    service = ws.path("service")
    shutil.copytree(SERVICE_DIR, service, ignore=shutil.ignore_patterns(".serverless", "node_modules"))
    return token, service


def serverless_e2e(ws: Workspace, report: Report, found: Secrets) -> None:
    """Inside the namespace: start the services, deploy, look, remove, look again. Each
    step writes its facts into ``report`` as soon as it has them."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH")
    token, service = prepare_run(ws, found)
    data = report.data
    with contextlib.ExitStack() as stack:
        with report.timed("setup"):
            services = start_services(ws, stack)
        stack.callback(record_network, services, data)
        data["resolved_amazonaws"] = socket.gethostbyname(f"sts.{REGION}.amazonaws.com")
        with report.timed("warm moto"):
            warm_moto()
        data["daemon_before"] = daemon_profile_status(token)
        sls, env = [node, str(SERVERLESS_JS)], serverless_env(ws, token, services.tls, node)
        with report.timed("deploy"):
            data["deploy_rc"] = run_logged([*sls, "deploy"], env, ws.log("deploy"), 150, service)
        data["daemon_after_deploy"] = daemon_profile_status(token)
        with report.timed("inspect"):
            data["role_account"] = account_snapshot(ROLE_ACCOUNT)
            data["base_account"] = account_snapshot(BASE_ACCOUNT)
            data["stack"] = stack_details(ROLE_ACCOUNT)
            data["function"] = function_details(ROLE_ACCOUNT)
            data["stack_in_base_account"] = stack_details(BASE_ACCOUNT)
        with report.timed("remove"):
            data["remove_rc"] = run_logged([*sls, "remove"], env, ws.log("remove"), 120, service)
        data["daemon_after_remove"] = daemon_profile_status(token)
        data["served"] = fetch_served_secrets(token, found)
        data["stack_after_remove"] = stack_details(ROLE_ACCOUNT)
        data["function_after_remove"] = function_details(ROLE_ACCOUNT)
        data["role_account_after_remove"] = account_snapshot(ROLE_ACCOUNT)
        data["daemon_alive"] = services.daemon.running()
        daemon_lines = ws.log("daemon").read_text().splitlines()
        data["daemon_log_profile_lines"] = sum(f"profile={PROFILE} " in line for line in daemon_lines)


def finish_report(ws: Workspace, report: Report, found: Secrets) -> None:
    """Scan every log for every secret (kinds only in the report) and attach masked tails."""
    leaks: dict[str, list[str]] = {}
    tails: dict[str, str] = {}
    for log in sorted(ws.path("logs").glob("*.log")):
        text = log.read_text(errors="replace")
        if kinds := found.leaks(text):
            leaks[log.stem] = kinds
        tails[log.stem] = found.mask(text[-4000:])
    report.data["leaks"] = leaks
    report.data["log_tails"] = tails
    report.data["logs_dir"] = str(ws.path("logs"))
    report.data["timings"]["total"] = round(time.monotonic() - report.started, 2)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    """As PID 1 of the namespace the runner ignores SIGTERM by default; turn it into an
    exit so the ``finally`` blocks stop every child before the kernel kills the rest."""
    raise SystemExit(128 + signum)


def inner_main(workdir: Path, result: Path, outer_mount_ns: str) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    ws, report, found = Workspace(workdir), Report(), Secrets()
    report.data["timings"] = {}
    rc = 0
    try:
        assert_private_namespace(outer_mount_ns)
        serverless_e2e(ws, report, found)
    except BaseException as exc:
        report.data["error"] = found.mask("".join(traceback.format_exception(exc))[-4000:])
        rc = 1
    finally:
        ws.path("logs").mkdir(parents=True, exist_ok=True)
        finish_report(ws, report, found)
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(report.data, indent=2, sort_keys=True))
        tmp.replace(result)
    return rc


# --------------------------------------------------------------------------- outer side


def unshare_argv(inner: Sequence[str]) -> list[str]:
    """Private mount, net and pid namespaces. ``--fork --kill-child`` makes the runner
    PID 1 there and kills it if unshare dies: the kernel then kills everything left."""
    return [
        "unshare",
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
        "--",
        *inner,
    ]


def namespace_problem() -> str | None:
    """Why this machine cannot run the namespace tests, or None."""
    if os.geteuid() != 0:
        return "needs root to create network and mount namespaces (unshare)"
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is not installed"
    probe = subprocess.run(unshare_argv(["true"]), capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"unshare cannot create namespaces here: {probe.stderr.strip()[:300]}"
    return None


def serverless_problem() -> str | None:
    """Why serverless cannot run here (no node, no npm ci), or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not SERVERLESS_JS.exists():
        return f"{SERVERLESS_JS.relative_to(REPO)} is missing (run npm ci in tests/clients)"
    return None


@dataclass
class NamespaceRun:
    returncode: int
    output: str
    seconds: float
    report: dict[str, Any]


def _stop_group(proc: subprocess.Popen[bytes]) -> bytes:
    """SIGTERM unshare and the runner (which then stops its children), SIGKILL if slow;
    the rest of the namespace dies with its PID 1. Returns the output collected so far."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=15)[0] or b""
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0] or b""


def run_serverless_in_namespace(workdir: Path, timeout: float = 240.0) -> NamespaceRun:
    """Run the inner side under unshare with a hard timeout: on expiry the whole group
    gets SIGTERM (the runner cleans up), then SIGKILL."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / "report.json"
    inner = [
        sys.executable,
        "-m",
        "tests.support.netns",
        "serverless",
        "--workdir",
        str(workdir),
        "--result",
        str(result),
        "--outer-mount-ns",
        os.readlink("/proc/self/ns/mnt"),
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        RUN_MARKER: str(workdir),
    }
    start = time.monotonic()
    proc = subprocess.Popen(
        unshare_argv(inner),
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        output = _stop_group(proc) + f"\n[netns] killed after the {timeout:.0f}s timeout\n".encode()
    except BaseException:  # Ctrl-C, pytest-timeout: unshare runs in its own session
        _stop_group(proc)
        raise
    seconds = time.monotonic() - start
    report: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
    return NamespaceRun(proc.returncode, output.decode(errors="replace"), seconds, report)


def leftover_processes(workdir: Path) -> list[str]:
    """Processes (from any namespace we can see) still carrying this run's marker."""
    needle = f"{RUN_MARKER}={workdir}".encode() + b"\0"
    found: list[str] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes():
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inner = sub.add_parser("serverless", help="(inside the namespace) deploy + remove, write a report")
    inner.add_argument("--workdir", type=Path, required=True)
    inner.add_argument("--result", type=Path, required=True)
    inner.add_argument("--outer-mount-ns", required=True)
    outer = sub.add_parser("run", help="(on the host) run the serverless check in a namespace")
    outer.add_argument("--workdir", type=Path, required=True)
    outer.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    if args.command == "serverless":
        return inner_main(args.workdir, args.result, args.outer_mount_ns)
    run = run_serverless_in_namespace(args.workdir, args.timeout)
    print(run.output)
    print(json.dumps({k: v for k, v in run.report.items() if k != "log_tails"}, indent=2))
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
