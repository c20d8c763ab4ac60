"""The set-up behind ``rolebroker port80`` (cli/port80.py): the literal
``curl localhost/creds/prod`` for one user, by NAT.

One nftables table per user, ``inet rolebroker-port80-<uid>``, redirects that user's own
connections to 127.0.0.1:80 and [::1]:80 onto the daemon's port (``meta skuid``: the kernel's
uid of the socket, which a process cannot choose). Nothing listens on port 80, no process
runs as root, other users' port 80 is untouched, and the daemon still sees the real client
socket (identity.py looks it up at its original destination), so its ForeignUser check, the
audit log and ``same_user_without_token`` all keep working. The old ``rolebroker-http``
relay could not: the daemon saw the relay's uid, never the caller's.

Built as plain data (the Step and Outcome of containers_setup.py), so the printed script is
exactly what ``--apply`` runs, and the tests apply the same steps in a private namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rolebroker.authtoken import new_nonce, proof_is_valid
from rolebroker.cli.containers_setup import GONE, Runner, Step, render_steps, run_steps, subprocess_runner
from rolebroker.cli.containers_setup import Outcome as Outcome  # for callers' runners

FAMILY = "inet"
HTTP_PORT = 80
NAT_PRIORITY = "-100"
"""dstnat, spelled as a number (older nft refuses the name in the output hook)."""
TOKENLESS_LINE = "same_user_without_token = true"
RULESET_DIR = Path("/etc/rolebroker")
UNIT_DIR = Path("/etc/systemd/system")

Action = Literal["setup", "remove"]


class Port80Error(RuntimeError):
    """A step failed; the message names the command and what to do."""


def table_name(uid: int) -> str:
    return f"rolebroker-port80-{uid}"


def unit_name(uid: int) -> str:
    return f"rolebroker-port80-{uid}.service"


def ruleset_path(uid: int) -> Path:
    return RULESET_DIR / f"port80-{uid}.nft"


def _checked(uid: int, port: int) -> tuple[int, int]:
    if uid < 0:
        raise ValueError(f"not a uid: {uid}")
    if not 1 <= port <= 65535 or port == HTTP_PORT:
        raise ValueError(f"the daemon's port must be 1-65535 and not {HTTP_PORT}, not {port}")
    return uid, port


def ruleset(uid: int, port: int) -> str:
    """The ``nft -f`` text. Declaring, deleting and re-declaring the table in one transaction
    replaces it atomically: applying it twice leaves one copy, with the new port."""
    uid, port = _checked(uid, port)
    table = f"{FAMILY} {table_name(uid)}"
    return (
        f"# rolebroker: uid {uid}'s connections to localhost port {HTTP_PORT} -> its daemon on port {port}\n"
        f"table {table}\n"
        f"delete table {table}\n"
        f"table {table} {{\n"
        "\tchain output {\n"
        f"\t\ttype nat hook output priority {NAT_PRIORITY}; policy accept;\n"
        f"\t\tmeta skuid {uid} ip daddr 127.0.0.1 tcp dport {HTTP_PORT} redirect to :{port}\n"
        f"\t\tmeta skuid {uid} ip6 daddr ::1 tcp dport {HTTP_PORT} redirect to :{port}\n"
        "\t}\n"
        "}\n"
    )


def systemd_unit(uid: int) -> str:
    """Re-applies the table at boot; stopping the unit removes it."""
    return (
        "[Unit]\n"
        f"Description=rolebroker: localhost port {HTTP_PORT} for uid {uid}'s daemon (nftables redirect)\n"
        "After=network-pre.target nftables.service\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=nft -f {ruleset_path(uid)}\n"
        f"ExecStop=-nft delete table {FAMILY} {table_name(uid)}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    uid: int
    port: int
    steps: tuple[Step, ...]


def setup_plan(uid: int, port: int, *, persist: bool = True) -> Plan:
    """The rules now, and (``persist``) a ruleset file and a unit that re-apply them at boot."""
    uid, port = _checked(uid, port)
    steps = [
        Step(f"redirect uid {uid}'s localhost:80 to port {port}", ("nft", "-f", "-"), ruleset(uid, port))
    ]
    if persist:
        steps += [
            Step("a directory for the ruleset", ("mkdir", "-p", str(RULESET_DIR))),
            Step("the ruleset the unit applies at boot", ("tee", str(ruleset_path(uid))), ruleset(uid, port)),
            Step(
                "the unit that re-applies it at boot",
                ("tee", str(UNIT_DIR / unit_name(uid))),
                systemd_unit(uid),
            ),
            Step("make systemd read the unit", ("systemctl", "daemon-reload")),
            Step("apply it at every boot", ("systemctl", "enable", unit_name(uid))),
        ]
    return Plan("setup", uid, port, tuple(steps))


def remove_plan(uid: int, *, persist: bool = True) -> Plan:
    """Everything ``setup_plan`` added; each step is harmless when it is already gone."""
    steps: list[Step] = []
    if persist:
        steps += [
            Step("no longer apply it at boot", ("systemctl", "disable", unit_name(uid)), None, GONE),
            Step(
                "remove the unit and the ruleset file",
                ("rm", "-f", str(UNIT_DIR / unit_name(uid)), str(ruleset_path(uid))),
            ),
            Step("make systemd forget the unit", ("systemctl", "daemon-reload")),
        ]
    steps.append(Step("remove the redirect", ("nft", "delete", "table", FAMILY, table_name(uid)), None, GONE))
    return Plan("remove", uid, 0, tuple(steps))


def render(plan: Plan, *, sudo: bool) -> str:
    """The plan as a shell script to read, or to copy and run."""
    title = f"rolebroker port80 {'--remove' if plan.action == 'remove' else ''}".rstrip()
    return render_steps(title, plan.steps, sudo=sudo, already="there" if plan.action == "setup" else "gone")


def apply(plan: Plan, runner: Runner = subprocess_runner) -> list[str]:
    """Runs every step in order; one line per step. Stops at the first failure with a
    Port80Error naming the command (running the same command again is always safe)."""

    def failed(step: Step, _outcome: Outcome, detail: str) -> Exception:
        hint = ""
        if step.argv[0] == "systemctl":
            hint = " Without systemd, use --no-persist (the rule then lasts until reboot)."
        return Port80Error(
            f"'{shlex.join(step.argv)}' failed ({detail}).{hint} Fix the cause and run the same command "
            "again: every step is safe to repeat."
        )

    return run_steps(plan.steps, runner, already="there" if plan.action == "setup" else "gone", failed=failed)


# -- checking it (doctor --port80): by behaviour, so no root is needed ------------------------

PROBE_PROFILE = "rolebroker-doctor-port80-probe"
"""A profile name nobody has: a tokenless request for it says how the daemon treats the
caller (404 ProfileNotFound: served as its own user; 401: tokenless mode off; 403
ForeignUser: the daemon sees another uid, i.e. a relay) and fetches no credentials."""

Verdict = Literal["refused", "not-rolebroker", "tokenless", "token-required", "foreign", "error"]


@dataclass(frozen=True, slots=True)
class Probe:
    host: str
    verdict: Verdict
    detail: str = ""


def probe(token: str, host: str, daemon_port: int, port: int = HTTP_PORT, timeout: float = 5.0) -> Probe:
    """What a tokenless ``curl http://localhost:PORT/creds/...`` from this user meets at
    ``host``. The listener must first prove it is the daemon *behind a redirect*: its
    proof names the address the connection arrived on, the daemon's own port. Never sends
    the token."""
    import http.client  # only doctor --port80 sends anything

    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        nonce = new_nonce()
        connection.request("GET", f"/proof?nonce={nonce.hex()}", headers={"Host": "localhost"})
        response = connection.getresponse()
        text = response.read(4096).decode("utf-8", "replace")
        answer = _json_field(text, "proof") if response.status == 200 else None
        if not proof_is_valid(token, nonce, host, daemon_port, answer):
            return Probe(host, "not-rolebroker", f"HTTP {response.status}")
        connection.auto_open = 0
        path = "/creds/" + urllib.parse.quote(f"{PROBE_PROFILE}-{secrets.token_hex(4)}", safe="")
        connection.request("GET", path, headers={"Host": "localhost"})
        response = connection.getresponse()
        code = _json_field(response.read(65536).decode("utf-8", "replace"), "code")
    except ConnectionRefusedError:
        return Probe(host, "refused")
    except (OSError, http.client.HTTPException) as exc:
        return Probe(host, "error", f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()
    if response.status == 404 and code == "ProfileNotFound":
        return Probe(host, "tokenless")
    if response.status == 401:
        return Probe(host, "token-required", str(code))
    if code == "ForeignUser":
        return Probe(host, "foreign", str(code))
    return Probe(host, "error", f"HTTP {response.status} {code}")


def _json_field(text: str, name: str) -> object:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body.get(name) if isinstance(body, dict) else None


def current_uid(environ: dict[str, str] | None = None, override: int | None = None) -> int:
    """Whose connections to redirect: ``--uid``, else the user running the command. Run
    through sudo (root with ``SUDO_UID``), the rule would be root's: refuse and say so."""
    if override is not None:
        return override
    env = os.environ if environ is None else environ
    if os.geteuid() == 0 and env.get("SUDO_UID"):
        raise ValueError(
            "run `rolebroker port80` as yourself, not through sudo: it calls sudo for the rules and "
            "needs your uid and your daemon's port (or pass --uid and --port)"
        )
    return os.getuid()


def probe_all(token: str, daemon_port: int, hosts: Sequence[str] = ("127.0.0.1", "::1")) -> list[Probe]:
    return [probe(token, host, daemon_port) for host in hosts]
