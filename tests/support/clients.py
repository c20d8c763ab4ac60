"""The real AWS clients the suite drives, run as separate processes, and the one rule for
when a missing client skips: on a developer machine a missing node or Debian AWS CLI v2
skips with a visible reason; with ``CI`` set nothing may skip, so the test fails instead.

Every client gets nothing but the container endpoint, the token and a region
(``Daemon.client_env``), plus the STS endpoint of the local moto server for its own call.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.support.ci import skip_or_fail
from tests.support.daemon import REPO, Daemon

CLIENTS_DIR = REPO / "tests" / "clients"
NODE_MODULES = CLIENTS_DIR / "node_modules"
AWS_CLI_V2 = Path("/usr/bin/aws")
MIN_NODE_MAJOR = 18

# A boto3 process asking STS who it is. It also counts the container-credential attempts
# that failed (botocore logs each one at debug level before it retries), so tests can tell
# that a retry happened and joined the daemon's in-flight STS call.
BOTO3_IDENTITY = """\
import json, logging, sys, boto3

class Count(logging.Handler):
    failed = 0
    def emit(self, record):
        if "container metadata" in record.getMessage():
            Count.failed += 1

logger = logging.getLogger("botocore.utils")
logger.setLevel(logging.DEBUG)
logger.addHandler(Count())
logger.propagate = False
try:
    identity = boto3.client("sts").get_caller_identity()
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
finally:
    print(f"credential-attempts-failed: {Count.failed}", file=sys.stderr)
print(json.dumps({k: identity[k] for k in ("UserId", "Account", "Arn")}))
"""


def _version_of(argv: Sequence[str]) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if result.returncode == 0 and text else None


# The require_* checks run once per test session; a missing client raises (skip or fail),
# which functools.cache does not remember, so every affected test reports it.


@functools.cache
def require_node() -> str:
    """The path of a node new enough for the pinned SDKs."""
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed")
    version = _version_of([node, "--version"]) or ""
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        skip_or_fail(f"cannot tell the version of {node} ({version!r})")
    if major < MIN_NODE_MAJOR:
        skip_or_fail(f"node {version} is too old (need >= {MIN_NODE_MAJOR})")
    return node


@functools.cache
def require_node_package(name: str) -> str:
    """node, plus ``name`` installed in tests/clients/node_modules at its pinned version."""
    node = require_node()
    pinned = json.loads((CLIENTS_DIR / "package.json").read_text())["dependencies"][name]
    manifest = NODE_MODULES / name / "package.json"
    if not manifest.exists():
        skip_or_fail(f"{name} is not installed in tests/clients/node_modules")
    installed = json.loads(manifest.read_text()).get("version")
    if installed != pinned:
        skip_or_fail(f"{name} {installed} is installed but package.json pins {pinned}")
    return node


@functools.cache
def require_aws_cli_v2() -> str:
    """The Debian AWS CLI v2; never the pip v1 ``aws`` that may come first on PATH."""
    if not AWS_CLI_V2.exists():
        skip_or_fail(f"AWS CLI v2 ({AWS_CLI_V2}, Debian package awscli) is not installed")
    version = _version_of([str(AWS_CLI_V2), "--version"]) or ""
    if not version.startswith("aws-cli/2."):
        skip_or_fail(f"{AWS_CLI_V2} is not AWS CLI v2 ({version!r})")
    return str(AWS_CLI_V2)


@functools.cache
def require_aws_cli_v1() -> None:
    """The pip AWS CLI v1 importable by this Python (the project's test extra)."""
    if _version_of([sys.executable, "-m", "awscli", "--version"]) is None:
        skip_or_fail(f"AWS CLI v1 (pip awscli) is not installed for {sys.executable}")


# -- running one client ------------------------------------------------------------------


@dataclass
class ClientRun:
    client: Client
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def identity(self) -> dict[str, str]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]

    def counter(self, name: str) -> int | None:
        """A ``name: N`` line the client scripts print on stderr, if any."""
        for line in self.stderr.splitlines():
            if line.startswith(f"{name}: "):
                return int(line.split(": ", 1)[1])
        return None


@dataclass(frozen=True)
class Client:
    """How to run one client's ``sts get-caller-identity`` against a given STS endpoint."""

    name: str

    def version(self) -> str:
        """What is installed right now, for failure messages and the report."""
        try:
            if self.name in ("boto3", "cli-v1"):
                return metadata.version("boto3" if self.name == "boto3" else "awscli")
            if self.name in ("js-v3", "js-v2"):
                package = "@aws-sdk/client-sts" if self.name == "js-v3" else "aws-sdk"
                manifest: dict[str, Any] = json.loads((NODE_MODULES / package / "package.json").read_text())
                return str(manifest["version"])
        except (OSError, ValueError, KeyError, metadata.PackageNotFoundError):
            return "missing"
        return _version_of([str(AWS_CLI_V2), "--version"]) or "missing"

    def require(self) -> None:
        if self.name == "cli-v2":
            require_aws_cli_v2()
        elif self.name == "cli-v1":
            require_aws_cli_v1()
        elif self.name == "js-v3":
            require_node_package("@aws-sdk/client-sts")
        elif self.name == "js-v2":
            require_node_package("aws-sdk")

    def command(self, sts_endpoint: str) -> tuple[list[str], dict[str, str]]:
        """argv and the extra environment (only the STS endpoint) for this client."""
        if self.name == "boto3":
            return [sys.executable, "-c", BOTO3_IDENTITY], {"AWS_ENDPOINT_URL_STS": sts_endpoint}
        if self.name == "cli-v1":
            argv = [sys.executable, "-m", "awscli", "sts", "get-caller-identity", "--output", "json"]
            return argv, {"AWS_ENDPOINT_URL_STS": sts_endpoint}
        if self.name == "cli-v2":
            argv = [str(AWS_CLI_V2), "sts", "get-caller-identity", "--output", "json"]
            return [*argv, "--endpoint-url", sts_endpoint], {"AWS_PAGER": ""}
        node = shutil.which("node") or "node"
        if self.name == "js-v3":
            script = str(CLIENTS_DIR / "sts-identity-v3.mjs")
            return [node, script], {"AWS_ENDPOINT_URL_STS": sts_endpoint}
        if self.name == "js-v2":
            return [node, str(CLIENTS_DIR / "sts-identity-v2.js"), sts_endpoint], {}
        raise ValueError(self.name)


CLIENT_NAMES = ("boto3", "cli-v1", "cli-v2", "js-v3", "js-v2")
CLIENTS = {name: Client(name) for name in CLIENT_NAMES}


def run_client(
    client: Client,
    daemon: Daemon,
    profile: str,
    sts_endpoint: str,
    *,
    env: Mapping[str, str] | None = None,
    without: Sequence[str] = (),
    timeout: float = 60.0,
) -> ClientRun:
    """Run ``client`` as its own process with only the daemon's client environment (plus
    ``env``, minus the names in ``without``). Skips (or fails on CI) if it is missing."""
    client.require()
    argv, extra = client.command(sts_endpoint)
    client_env = {**daemon.client_env(profile), **extra, **(env or {})}
    for name in without:
        client_env.pop(name, None)
    Path(client_env["HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = subprocess.run(
        argv, env=client_env, capture_output=True, text=True, timeout=timeout, cwd=CLIENTS_DIR, check=False
    )
    return ClientRun(client, result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def describe(run: ClientRun, daemon: Daemon) -> str:
    """A failure message: the client's output and the daemon's log, secrets masked."""
    label = f"{run.client.name} {run.client.version()}"
    return failure_report(label, run.returncode, run.seconds, run.stdout, run.stderr, daemon)


def failure_report(
    label: str, returncode: int | None, seconds: float, stdout: str, stderr: str, daemon: Daemon
) -> str:
    """A client process's output and the daemon's log, every secret the daemon served masked."""

    def mask(text: str) -> str:
        for secret in daemon.secrets():
            text = text.replace(secret, "<SECRET>")
        return text[-3000:]

    return (
        f"\n{label} rc={returncode} after {seconds:.1f}s"
        f"\n--- stdout ---\n{mask(stdout)}\n--- stderr ---\n{mask(stderr)}"
        f"\n--- daemon ---\n{daemon.safe_output()[-3000:]}"
    )
