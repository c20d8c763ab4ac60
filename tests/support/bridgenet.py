"""A laptop with containers and a LAN neighbour, built from private network namespaces.

Each namespace is held by one ``unshare --net sleep`` process (killed with the test process
too, through PR_SET_PDEATHSIG); commands run in it through ``nsenter --net``. When the
holders die the namespaces, and every interface in them, are gone: the machine's own
network is never touched, and no file under /run/netns is created.

Topology (addresses exist only inside these namespaces)::

    container1 eth0 172.30.1.2/24 --veth-- br-rbtest  172.30.1.1/24 ┐
    container2 eth0 172.30.2.2/24 --veth-- br-rbtest2 172.30.2.1/24 ├ "host"
    lan        eth0 192.168.77.2/24 --veth-- rbtest-lan 192.168.77.1/24 ┘ (no bridge)

The bridges are named ``br-...`` like Docker's user-defined networks, so the project's own
rules apply to them; the LAN peer routes 169.254.170.2 to the host with a static ARP entry,
as a hostile neighbour would. The project's set-up runs in the "host" namespace only.

``python -m tests.support.bridgenet stub|probe`` are the two small programs run inside the
namespaces: a recording HTTP server and a one-shot HTTP client that prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rolebroker.cli import containers_setup as containers
from tests.support.moto import moto_argv, moto_env
from tests.support.procs import ManagedProcess
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("ip", "nft", "unshare", "nsenter")
HOLDER_SECONDS = 300  # upper bound on a namespace's life even if every clean-up failed

CONTAINER1 = "172.30.1.2"
CONTAINER2 = "172.30.2.2"
HOST_LAN = "192.168.77.1"
LAN_PEER = "192.168.77.2"

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the holder, before exec: SIGKILL when the test process goes, however it goes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def namespace_problem() -> str | None:
    """Why this machine cannot build the rig, or None."""
    if missing := missing_tools():
        return f"missing {', '.join(missing)} (Debian packages iproute2, nftables, util-linux)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces, bridges and nftables rules"
    probe = subprocess.run(
        ["unshare", "--net", "--", "nft", "list", "ruleset"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace with nftables here: {probe.stderr.strip()[:300]}"
    return None


@dataclass
class Namespace:
    """One private network namespace, alive while its holder process runs."""

    name: str
    holder: subprocess.Popen[bytes]

    @classmethod
    def create(cls, name: str) -> Namespace:
        holder = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", str(HOLDER_SECONDS)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        ns = cls(name, holder)
        deadline = time.monotonic() + 5
        # unshare execs sleep once the namespace exists: wait for that, not a fixed time.
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if holder.poll() is not None or time.monotonic() > deadline:
                ns.close()
                raise RuntimeError(f"namespace {name}: unshare did not start")
            time.sleep(0.01)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    @property
    def pid(self) -> int:
        return self.holder.pid

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--net", "--", *argv]

    def run(
        self, *argv: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(argv)}: {done.stderr.strip()}")
        return done

    def runner(self) -> containers.Runner:
        """A runner for the project's plans that runs each step inside this namespace."""

        def run(argv: Sequence[str], stdin: str | None) -> containers.Outcome:
            done = self.run(*argv, stdin=stdin, check=False)
            return containers.Outcome(done.returncode, done.stdout, done.stderr)

        return run

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait(10)


def python_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.bridgenet", *args]


def _env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def fetch(ns: Namespace, *requests: dict[str, Any], timeout: float = 10.0) -> list[dict[str, Any]]:
    """Requests from inside ``ns``, one process for all of them (see ``fetch_main``)."""
    done = subprocess.run(
        ns.argv(*python_argv("fetch", json.dumps(list(requests)), "--timeout", str(timeout))),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout * len(requests) + 20,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fetch failed: {done.stderr[-500:]}")
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def start_moto(ns: Namespace, port: int) -> ManagedProcess:
    """moto inside ``ns`` on 0.0.0.0: the daemon there reaches it on loopback, a container
    through its bridge gateway; nothing outside the test's namespaces sees it. Returns once
    it answers."""
    moto = ManagedProcess(ns.argv(*moto_argv("0.0.0.0", port)), moto_env())
    try:
        wait_until(
            lambda: fetch(ns, {"url": f"http://127.0.0.1:{port}/"})[0].get("status"),
            30,
            "moto in the host namespace",
            step=0.2,
        )
    except BaseException:
        moto.cleanup()
        raise
    return moto


@dataclass
class Stub:
    """A recording HTTP server inside a namespace; :meth:`stop` returns what it saw."""

    process: subprocess.Popen[str]
    seen: list[dict[str, Any]] = field(default_factory=list)

    def stop(self) -> list[dict[str, Any]]:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self.seen = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return self.seen


@dataclass
class BridgeNet:
    host: Namespace
    container1: Namespace
    container2: Namespace
    lan: Namespace
    link_kind: containers.LinkKind
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def apply(self, plan: containers.Plan) -> list[str]:
        """The project's own set-up or teardown, in the host namespace only."""
        return containers.apply(plan, self.host.runner())

    def start_stub(self, port: int, bind: str = containers.ADDRESS) -> Stub:
        proc = subprocess.Popen(
            self.host.argv(*python_argv("stub", "--bind", bind, "--port", str(port))),
            cwd=REPO,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ready" once listening, or EOF if bind failed
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"stub did not start: {line!r} {proc.communicate(timeout=10)[1][-500:]}")
        return Stub(proc)

    def probe(self, ns: Namespace, url: str, timeout: float = 1.5) -> dict[str, Any]:
        """One GET from inside ``ns``; a JSON verdict, never raises for network errors."""
        done = subprocess.run(
            ns.argv(*python_argv("probe", url, "--timeout", str(timeout))),
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout + 20,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"probe failed: {done.stderr[-500:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def fetch(self, ns: Namespace, *requests: dict[str, Any], timeout: float = 10.0) -> list[dict[str, Any]]:
        return fetch(ns, *requests, timeout=timeout)

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.communicate(timeout=10)
        for ns in (self.lan, self.container2, self.container1, self.host):
            ns.close()


def _supports_dummy(host: Namespace) -> bool:
    """Some kernels (this project's CI VM among them) are built without the dummy driver;
    the set-up then uses a port-less bridge, which the tests exercise instead."""
    done = host.run("ip", "link", "add", "rbprobe0", "type", "dummy", check=False)
    if done.returncode == 0:
        host.run("ip", "link", "del", "rbprobe0")
        return True
    return False


def _container(host: Namespace, ns: Namespace, bridge: str, subnet: int, veth: str) -> None:
    gateway, address = f"172.30.{subnet}.1", f"172.30.{subnet}.2"
    host.run("ip", "link", "add", bridge, "type", "bridge")
    host.run("ip", "addr", "add", f"{gateway}/24", "dev", bridge)
    host.run("ip", "link", "set", bridge, "up")
    host.run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(ns.pid))
    host.run("ip", "link", "set", veth, "master", bridge, "up")
    ns.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    ns.run("ip", "route", "add", "default", "via", gateway)


def _lan_peer(host: Namespace, lan: Namespace) -> None:
    host.run("ip", "link", "add", "rbtest-lan", "type", "veth", "peer", "name", "eth0", "netns", str(lan.pid))
    host.run("ip", "addr", "add", f"{HOST_LAN}/24", "dev", "rbtest-lan")
    host.run("ip", "link", "set", "rbtest-lan", "up")
    lan.run("ip", "addr", "add", f"{LAN_PEER}/24", "dev", "eth0")
    lan.run("ip", "link", "set", "eth0", "up")
    # The attack: send frames for 169.254.170.2 straight to the host's MAC, no ARP asked.
    mac = json.loads(host.run("ip", "-j", "link", "show", "rbtest-lan").stdout)[0]["address"]
    lan.run("ip", "route", "add", f"{containers.ADDRESS}/32", "dev", "eth0")
    lan.run("ip", "neigh", "replace", containers.ADDRESS, "lladdr", mac, "dev", "eth0", "nud", "permanent")


@contextlib.contextmanager
def bridgenet() -> Iterator[BridgeNet]:
    """Build the topology; everything goes when the block ends, whatever happened in it."""
    made: list[Namespace] = []
    try:
        for name in ("host", "container1", "container2", "lan"):
            made.append(Namespace.create(name))
        host, c1, c2, lan = made
        kind: containers.LinkKind = "dummy" if _supports_dummy(host) else "bridge"
        _container(host, c1, "br-rbtest", 1, "rbtest-c1")
        _container(host, c2, "br-rbtest2", 2, "rbtest-c2")
        _lan_peer(host, lan)
    except BaseException:
        for ns in reversed(made):
            ns.close()
        raise
    net = BridgeNet(host, c1, c2, lan, kind)
    try:
        yield net
    finally:
        net.close()


# --------------------------------------------------------------------------- inner programs


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        record = {
            "peer": self.client_address[0],
            "path": self.path,
            "local": self.connection.getsockname()[0],
        }
        print(json.dumps(record), flush=True)
        body = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: stdout carries only the records."""


def _exit_on_term(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def stub_main(bind: str, port: int) -> int:
    server = ThreadingHTTPServer((bind, port), _Recorder)
    signal.signal(signal.SIGTERM, _exit_on_term)
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


def probe_main(url: str, timeout: float) -> int:
    verdict: dict[str, Any]
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            verdict = {"ok": True, "status": response.status, "body": json.loads(response.read())}
    except urllib.error.URLError as exc:
        reason = exc.reason
        kind = "refused" if isinstance(reason, ConnectionRefusedError) else type(reason).__name__
        if isinstance(reason, (TimeoutError, socket.timeout)):
            kind = "timeout"
        verdict = {"ok": False, "error": kind}
    except (TimeoutError, OSError) as exc:
        verdict = {"ok": False, "error": "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__}
    print(json.dumps(verdict))
    return 0


def _shown(body: Any) -> Any:
    """A credentials body without its secrets: tests compare key ids, never print secrets."""
    if isinstance(body, dict) and "SecretAccessKey" in body:
        return {"AccessKeyId": body.get("AccessKeyId"), "RoleArn": body.get("RoleArn")}
    return body


def _fetch_from(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(spec["url"])
    connection = http.client.HTTPConnection(
        url.hostname or "", url.port or 80, timeout=timeout, source_address=(spec["source"], 0)
    )
    try:
        connection.request(spec.get("method", "GET"), url.path, headers=spec.get("headers", {}))
        response = connection.getresponse()
        return {"status": response.status, "body": _shown(json.loads(response.read()))}
    except OSError as exc:
        return {"error": type(exc).__name__}
    finally:
        connection.close()


def fetch_main(requests: list[dict[str, Any]], timeout: float) -> int:
    """Each request ``{"url", "method"?, "headers"?, "body"?}`` in turn; prints one JSON list
    of ``{"status", "body"}`` (or ``{"error"}``). Only ``AccessKeyId`` of a credentials body
    is kept: the test output never shows a secret."""
    results: list[dict[str, Any]] = []
    for spec in requests:
        if "source" in spec:  # from a chosen source address: http.client can bind one
            results.append(_fetch_from(spec, timeout))
            continue
        data = json.dumps(spec["body"]).encode() if "body" in spec else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(
            spec["url"],
            data=data,
            method=spec.get("method", "GET"),
            headers={**headers, **spec.get("headers", {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            results.append({"error": type(getattr(exc, "reason", exc)).__name__})
            continue
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw[:200].decode("latin-1")}
        results.append({"status": status, "body": _shown(body)})
    print(json.dumps(results))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.bridgenet")
    sub = parser.add_subparsers(dest="command", required=True)
    stub = sub.add_parser("stub")
    stub.add_argument("--bind", required=True)
    stub.add_argument("--port", type=int, required=True)
    probe = sub.add_parser("probe")
    probe.add_argument("url")
    probe.add_argument("--timeout", type=float, default=1.5)
    fetch = sub.add_parser("fetch")
    fetch.add_argument("requests", help="a JSON list of requests")
    fetch.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return fetch_main(json.loads(args.requests), args.timeout)
    if args.command == "stub":
        return stub_main(args.bind, args.port)
    return probe_main(args.url, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
