"""The probe of ``doctor --containers --probe``: one request as a container sends it.

As root, it stands up a throwaway container, sends ``GET http://169.254.170.2/creds``
from it without a grant, and removes everything again:

- a bridge ``br-rbp<pid in hex>``, named like Docker's user-defined networks so the set-up's
  ``br-*`` rules cover it exactly as they cover a compose network. Never Docker's own
  ``docker0``: that may not exist (Podman, compose-only hosts), Docker owns its address plan
  (an address we took could be handed to a real container meanwhile), and a probe must not
  change a bridge that running containers use. Docker's names are ``br-`` and 12 hex digits,
  so ``rbp`` (not hex) never clashes with one;
- a veth pair into a fresh network namespace, held by one ``unshare --net sleep`` process
  that gets SIGKILL when the prober dies (PR_SET_PDEATHSIG): the namespace and the veth go
  with it whatever happens. Only the bridge lives in the host namespace; it is removed on
  success, failure, Ctrl-C and SIGTERM, and a bridge left by a prober that was SIGKILLed (its
  pid is in the name) is removed by the next probe;
- a /30 from 198.19.170.0/24 (RFC 2544 benchmarking space: never assigned to real networks, and
  private to the container listener's source check). fake-ip proxies use 198.18.0.0/16, so the
  upper half is taken. The first /30 that overlaps no route of any table and no address of the
  machine is used; when none is free the probe refuses and changes nothing.

Without a grant the container listener answers 401 ``MissingToken`` in its own JSON shape:
proof that the request crossed the DNAT rule and the input filter and reached rolebroker.
The container listener has no ``/proof`` route (a container must never learn anything about
the master token), so *whose* listener it is comes from the kernel's socket table: as root
every holder of the listening socket is visible, and under sudo a holder of another user
than the one who ran sudo is a squatter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rolebroker import procfs
from rolebroker.cli import containers_setup as setup
from rolebroker.cli.doctor import Finding, Level
from rolebroker.errors import MissingToken
from rolebroker.interrupts import raising_on

PROBE_RANGE = ipaddress.IPv4Network("198.19.170.0/24")
BRIDGE_PREFIX = "br-rbp"
VETH_PREFIX = "rbp"
HOLD_SECONDS = 120
"""Upper bound on the namespace's life should every clean-up fail."""
DEFAULT_TIMEOUT = 3.0
USER_AGENT = "rolebroker-doctor-probe"
"""How the probe's request shows in the audit log (a MissingToken refusal)."""
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
TOOLS = ("ip", "unshare", "nsenter")

_BRIDGE_NAME = re.compile(rf"^{re.escape(BRIDGE_PREFIX)}([0-9a-f]{{1,9}})$")

ReplyKind = Literal["answer", "refused", "timeout", "unreachable", "error"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What one request got: an HTTP answer, or how the connection failed."""

    kind: ReplyKind
    status: int = 0
    code: str | None = None
    message: str = ""
    detail: str = ""

    @property
    def is_rolebroker_refusal(self) -> bool:
        """The container listener's answer to a request without a grant."""
        return self.kind == "answer" and self.status == MissingToken.status and self.code == MissingToken.code


@dataclass(frozen=True, slots=True)
class Wiring:
    """The throwaway container's names and addresses (all of them temporary)."""

    bridge: str
    veth: str
    subnet: ipaddress.IPv4Network

    @classmethod
    def for_pid(cls, pid: int, subnet: ipaddress.IPv4Network) -> Wiring:
        return cls(f"{BRIDGE_PREFIX}{pid:x}", f"{VETH_PREFIX}{pid:x}", subnet)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def address(self) -> str:
        return str(self.subnet.network_address + 2)


# -- choosing names and addresses --------------------------------------------------------------


def _networks(rows: Any, *keys: str) -> Iterator[ipaddress.IPv4Network]:
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        for key in keys:
            value = row.get(key)
            if not isinstance(value, str) or value == "default":
                continue
            prefix = row.get("prefixlen") if key == "local" else None
            with contextlib.suppress(ValueError):
                yield ipaddress.IPv4Network(
                    f"{value}/{prefix}" if prefix is not None else value, strict=False
                )


def pick_subnet(routes: Any, addresses: Any) -> ipaddress.IPv4Network | None:
    """The first /30 of PROBE_RANGE that overlaps no route (``ip -j -4 route show table all``;
    default routes cover everything and are ignored) and no address (``ip -j -4 addr``)."""
    taken = list(_networks(routes, "dst"))
    for link in addresses if isinstance(addresses, list) else []:
        if isinstance(link, dict):
            taken += _networks(link.get("addr_info"), "local")
    for candidate in PROBE_RANGE.subnets(new_prefix=30):
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    return None


def stale_bridges(links: Any, alive: Callable[[int], bool]) -> list[str]:
    """Probe bridges whose prober is gone (it was SIGKILLed before its clean-up)."""
    stale = []
    for link in links if isinstance(links, list) else []:
        name = link.get("ifname") if isinstance(link, dict) else None
        match = _BRIDGE_NAME.match(name) if isinstance(name, str) else None
        if match and not alive(int(match.group(1), 16)):
            stale.append(str(name))
    return stale


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


# -- the request -------------------------------------------------------------------------------


def _socket_in(netns: Path) -> socket.socket:
    """A TCP socket that lives in the network namespace ``netns``: made by a short-lived
    thread that joins the namespace first (setns changes only the calling thread), so the
    rest of this process stays where it is."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns: {os.strerror(code)}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=enter, name="rolebroker-probe-netns")
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return made[0]


def request(timeout: float, netns: Path | None = None, port: int = setup.ECS_PORT) -> Reply:
    """``GET /creds`` to 169.254.170.2 without a grant, as an SDK in a container sends it:
    from inside ``netns``, or from this machine when None (a host-network container)."""
    sock = _socket_in(netns) if netns is not None else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection = http.client.HTTPConnection(setup.ADDRESS, port, timeout=timeout)
    try:
        sock.settimeout(timeout)
        sock.connect((setup.ADDRESS, port))
        connection.sock = sock
        connection.request("GET", "/creds", headers={"Host": setup.ADDRESS, "User-Agent": USER_AGENT})
        response = connection.getresponse()
        raw = response.read(8192)
    except ConnectionRefusedError:
        return Reply("refused")
    except TimeoutError:
        return Reply("timeout")
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return Reply("unreachable", detail=exc.strerror or "")
        return Reply("error", detail=f"{type(exc).__name__}: {exc.strerror or exc}")
    except http.client.HTTPException as exc:
        return Reply("error", detail=type(exc).__name__)
    finally:
        connection.close()
        sock.close()
    return _answer(response.status, raw)


def _answer(status: int, raw: bytes) -> Reply:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str):
        return Reply("answer", status, body["code"][:60], " ".join(body["message"].split())[:300])
    return Reply("answer", status, detail=f"HTTP {status}, not a rolebroker error body")


# -- what a reply means ------------------------------------------------------------------------

_WHY_PATH = "SDKs in containers ask 169.254.170.2:80 for their credentials"


def holder_text(holders: Sequence[procfs.Listener]) -> str:
    return "; ".join(h.describe() for h in holders) or "nothing"


def foreign_holders(holders: Sequence[procfs.Listener], me: int | None) -> list[procfs.Listener]:
    """Holders that are neither root nor ``me`` (the user who asked): squatters."""
    if me is None:
        return []
    return [h for h in holders if h.uid not in (0, me)]


def firewall_fix(port: int, drops: Sequence[str]) -> str:
    where = f" (here: {', '.join(drops)})" if drops else ""
    return (
        f"let the container bridges reach {setup.ADDRESS} port {port} in the firewall's input chain{where}, "
        f'e.g. nft insert rule inet filter input iifname "br-*" ip daddr {setup.ADDRESS} tcp dport {port} '
        f"accept (and the same for docker0, cni-podman*, podman*); ufw: sudo ufw allow in on docker0 to "
        f"{setup.ADDRESS} port {port} proto tcp (once per bridge)"
    )


def verdict(
    reply: Reply,
    *,
    where: str,
    port: int,
    rules: Finding,
    listener_off: bool,
    holders: Sequence[procfs.Listener] = (),
    me: int | None = None,
    drops: Sequence[str] = (),
) -> Finding:
    """One finding for one request: what happened, why it matters and the exact fix.
    ``rules``: the set-up's rules finding (a NOTE when it could not be read);
    ``listener_off``: nothing listens on the container port; ``drops``: input chains of
    other tables that drop (their names, for a timeout)."""
    served_by = f" (the listening socket: {holder_text(holders)})" if holders else ""
    rules_missing = rules.level is Level.PROBLEM
    restart = (
        "make the daemon listen: restart it after the set-up (systemctl --user restart rolebroker, or "
        'rolebroker serve), or set containers = "on" in config.toml so that the order does not matter'
    )
    if reply.is_rolebroker_refusal:
        foreign = foreign_holders(holders, me)
        if foreign:
            return Finding(
                Level.PROBLEM,
                f"{where}: 169.254.170.2:80 reaches a listener held by another user ({holder_text(foreign)})",
                "it answers like rolebroker, but containers would send their grants to that user",
                f"stop that process (ss -ltnp 'sport = :{port}'), then restart your daemon",
            )
        return Finding(
            Level.OK,
            f"{where}: 169.254.170.2:80 reaches rolebroker's container listener on port {port} "
            f"(401 {reply.code} without a grant, as expected)"
            + (f"; the listening socket: {holder_text(holders)}" if holders else ""),
        )
    if reply.kind == "answer":
        shown = f"{reply.status} {reply.code}: {reply.message}" if reply.code else reply.detail
        if reply.code is not None and reply.status in (401, 403):
            return Finding(
                Level.PROBLEM,
                f"{where}: rolebroker's container listener refused the request ({shown})",
                _WHY_PATH,
                "do what the message says",
            )
        return Finding(
            Level.PROBLEM,
            f"{where}: something that is not rolebroker's container listener answers ({shown}){served_by}",
            "containers would send their grants to it",
            f"stop it (ss -ltnp 'sport = :{port}'), then restart the daemon; if the rules forward port 80 "
            f"elsewhere: {setup.SETUP_FIX}",
        )
    if reply.kind == "refused":
        if rules_missing:
            return Finding(
                Level.PROBLEM,
                f"{where}: connection refused: port 80 of 169.254.170.2 is not forwarded",
                _WHY_PATH,
                setup.SETUP_FIX,
            )
        if listener_off:
            return Finding(
                Level.PROBLEM,
                f"{where}: connection refused: nothing listens on 169.254.170.2:{port}",
                _WHY_PATH,
                restart,
            )
        return Finding(
            Level.PROBLEM,
            f"{where}: connection refused{served_by}",
            _WHY_PATH,
            f"re-apply the rules ({setup.SETUP_FIX}), then restart the daemon",
        )
    if reply.kind == "timeout":
        if rules_missing:
            return Finding(
                Level.PROBLEM,
                f"{where}: no answer (timeout): the rules are missing",
                _WHY_PATH,
                setup.SETUP_FIX,
            )
        return Finding(
            Level.PROBLEM,
            f"{where}: no answer (timeout): something drops the packets before they reach port {port}",
            "a firewall whose input chain drops traffic from container bridges (ufw, firewalld, a policy "
            "drop chain) stops the forwarded request",
            firewall_fix(port, drops),
        )
    return Finding(
        Level.PROBLEM,
        f"{where}: {reply.detail or reply.kind}",
        _WHY_PATH,
        f"check the address and the rules: {setup.SETUP_FIX}",
    )


def input_drops(ruleset: Any) -> list[str]:
    """Base chains on the input hook of other tables that drop: their policy, or a rule's
    verdict (``nft -j list ruleset``). A hint for a timeout, not a proof."""
    items = list(setup.walk(ruleset))
    chains = {
        (c.get("family"), c.get("table"), c.get("name")): c
        for c in (item["chain"] for item in items if isinstance(item.get("chain"), dict))
    }
    found: list[str] = []
    for key, chain in chains.items():
        if chain.get("hook") != "input" or key[1] == setup.TABLE:
            continue
        rule_drops = any(
            isinstance(item.get("rule"), dict)
            and (item["rule"].get("family"), item["rule"].get("table"), item["rule"].get("chain")) == key
            and any("drop" in expr or "reject" in expr for expr in setup.walk(item["rule"].get("expr")))
            for item in items
        )
        if chain.get("policy") == "drop" or rule_drops:
            found.append(f"chain {key[0]} {key[1]} {key[2]}")
    return found


# -- the throwaway container -------------------------------------------------------------------


def _die_with_parent(parent: int) -> Callable[[], None]:
    def prepare() -> None:
        """In the holder, before exec: SIGKILL when the prober goes, however it goes."""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the prober died before prctl
            os._exit(1)

    return prepare


class ProbeRefused(Exception):
    """The probe cannot run here; the message says why and what to do."""


@dataclass
class Holder:
    """The process that keeps the throwaway namespace alive."""

    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls) -> Holder:
        process = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", str(HOLD_SECONDS)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent(os.getpid()),
            start_new_session=True,  # a Ctrl-C is for the prober, which then cleans up in order
        )
        holder = cls(process)
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while True:  # unshare execs sleep once the namespace exists
            with contextlib.suppress(OSError):
                if os.readlink(holder.netns) != mine:
                    return holder
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
                holder.close()
                raise ProbeRefused(f"cannot create a network namespace: {error[:200] or 'unshare failed'}")
            time.sleep(0.01)

    @property
    def netns(self) -> Path:
        return Path(f"/proc/{self.process.pid}/ns/net")

    def inside(self, *argv: str) -> tuple[str, ...]:
        return ("nsenter", f"--target={self.process.pid}", "--net", "--", *argv)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


class Interrupted(BaseException):
    """SIGTERM or SIGHUP during the probe: unwinds like Ctrl-C, through the clean-up."""


def _interruptible() -> contextlib.AbstractContextManager[None]:
    return raising_on(Interrupted, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """The clean-up runs to its end: a second Ctrl-C waits until it is done."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _must(runner: setup.Runner, *argv: str) -> str:
    outcome = runner(argv, None)
    if outcome.returncode != 0:
        detail = " ".join(outcome.stderr.split())[:200] or f"exit status {outcome.returncode}"
        raise ProbeRefused(f"'{' '.join(argv)}' failed: {detail}")
    return outcome.stdout


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else []
    except ValueError:
        return []


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The probe's findings, and the names it used (so tests can check they are gone)."""

    findings: list[Finding]
    wiring: Wiring | None = None
    holder_pid: int | None = None
    swept: tuple[str, ...] = ()


def run_probe(
    port: int,
    *,
    rules: Finding,
    address_ok: bool,
    runner: setup.Runner = setup.plain_runner,
    timeout: float = DEFAULT_TIMEOUT,
    me: int | None = None,
) -> ProbeResult:
    """As root: the throwaway container, its request, and the clean-up (always)."""
    where = "from a throwaway container"
    if not address_ok:
        return ProbeResult(
            [
                Finding(
                    Level.NOTE, f"not probed {where}: 169.254.170.2 is missing (above)", "", setup.SETUP_FIX
                )
            ]
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return ProbeResult(
            [
                Finding(
                    Level.NOTE,
                    f"not probed {where}: {', '.join(missing)} not found",
                    "",
                    "install iproute2 and util-linux",
                )
            ]
        )
    swept = tuple(
        stale_bridges(_json(runner(("ip", "-j", "link", "show", "type", "bridge"), None).stdout), _pid_alive)
    )
    for name in swept:
        runner(("ip", "link", "del", name), None)
    subnet = pick_subnet(
        _json(runner(("ip", "-j", "-4", "route", "show", "table", "all"), None).stdout),
        _json(runner(("ip", "-j", "-4", "addr", "show"), None).stdout),
    )
    if subnet is None:
        return ProbeResult(
            [
                Finding(
                    Level.PROBLEM,
                    f"not probed {where}: every /30 of {PROBE_RANGE} overlaps a route or address of this "
                    "machine, so nothing was changed",
                    "the probe never takes an address range this machine may be using",
                    "see ip -4 route show table all; test by hand from a real container instead: docker run "
                    "--rm curlimages/curl -s http://169.254.170.2/creds (expect 401 MissingToken)",
                )
            ],
            swept=swept,
        )
    wiring = Wiring.for_pid(os.getpid(), subnet)
    holder: Holder | None = None
    made_bridge = made_veth = False
    try:
        with _interruptible():
            holder = Holder.start()
            _must(runner, "ip", "link", "add", wiring.bridge, "type", "bridge")
            made_bridge = True
            _must(runner, "ip", "addr", "add", f"{wiring.gateway}/30", "dev", wiring.bridge)
            _must(runner, "ip", "link", "set", wiring.bridge, "up")
            pid = str(holder.process.pid)
            _must(
                runner, "ip", "link", "add", wiring.veth, "type", "veth", "peer", "name", "eth0", "netns", pid
            )
            made_veth = True
            _must(runner, "ip", "link", "set", wiring.veth, "master", wiring.bridge, "up")
            for argv in (
                ("ip", "link", "set", "lo", "up"),
                ("ip", "addr", "add", f"{wiring.address}/30", "dev", "eth0"),
                ("ip", "link", "set", "eth0", "up"),
                ("ip", "route", "add", "default", "via", wiring.gateway),
            ):
                _must(runner, *holder.inside(*argv))
            reply = request(timeout, holder.netns)
    except ProbeRefused as exc:
        return ProbeResult(
            [
                Finding(
                    Level.PROBLEM, f"not probed {where}: {exc}", "", "fix the cause and run the probe again"
                )
            ],
            wiring,
            holder.process.pid if holder else None,
            swept,
        )
    finally:
        with _uninterrupted():
            if made_veth:
                runner(("ip", "link", "del", wiring.veth), None)
            if made_bridge:
                runner(("ip", "link", "del", wiring.bridge), None)
            if holder is not None:
                holder.close()
    holders = procfs.holders_of(setup.ADDRESS, port)
    drops: list[str] = []
    if reply.kind == "timeout":
        drops = input_drops(_json(runner(("nft", "-j", "list", "ruleset"), None).stdout or "{}"))
    label = f"{where} ({wiring.address} on bridge {wiring.bridge})"
    finding = verdict(
        reply,
        where=label,
        port=port,
        rules=rules,
        listener_off=not holders,
        holders=holders,
        me=me,
        drops=drops,
    )
    cleaned = [
        Finding(Level.NOTE, f"removed {name}, left by an earlier probe that was killed before its clean-up")
        for name in swept
    ]
    return ProbeResult([*cleaned, finding], wiring, holder.process.pid if holder else None, swept)
