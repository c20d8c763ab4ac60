"""More real clients against the real daemon: aiobotocore, the AWS SDK for Go v1 and v2 as
Debian bookworm ships them, and rclone (Debian, built on Go SDK v1) talking to moto's S3.

Each one is its own process that gets nothing but AWS_CONTAINER_CREDENTIALS_FULL_URI,
AWS_CONTAINER_AUTHORIZATION_TOKEN, a region and the moto endpoint (``Daemon.client_env``).
The Go programs under tests/clients/go-v1 and go-v2 are built offline in GOPATH mode against
/usr/share/gocode, once per session, with a build cache that survives between runs. A missing
tool skips with the reason, or fails when CI is set (tests/clients/install.sh installs them).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ci import skip_or_fail
from tests.support.clients import CLIENTS_DIR, failure_report
from tests.support.daemon import Daemon
from tests.support.moto import MotoServer
from tests.support.stsproxy import StsProxy

# The Go programs are built once per session, so keep this module on one xdist worker.
pytestmark = pytest.mark.xdist_group("more-clients")

PROD_ADMIN_ARN = "arn:aws:sts::333333333333:assumed-role/admin/alice-admin"
PROD_ARN_PREFIX = "arn:aws:sts::222222222222:assumed-role/prod/"

GO = Path("/usr/bin/go")
GOPATH = Path("/usr/share/gocode")
# What each Go program imports, as Debian installs it (package, then the directory it fills).
GO_SDKS = {
    "go-v1": ("golang-github-aws-aws-sdk-go-dev", GOPATH / "src/github.com/aws/aws-sdk-go/service/sts"),
    "go-v2": ("golang-github-aws-aws-sdk-go-v2-dev", GOPATH / "src/github.com/aws/aws-sdk-go-v2/service/sts"),
}
RCLONE = Path("/usr/bin/rclone")

AIOBOTOCORE_IDENTITY = """\
import asyncio, json, sys
from aiobotocore.session import get_session

async def main():
    async with get_session().create_client("sts") as sts:
        return await sts.get_caller_identity()

try:
    identity = asyncio.run(main())
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
print(json.dumps({k: identity[k] for k in ("Account", "Arn")}))
"""


@dataclass(frozen=True)
class Run:
    name: str
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float

    def identity(self) -> dict[str, str]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]


def run_client(
    name: str,
    argv: Sequence[str],
    daemon: Daemon,
    profile: str,
    *,
    env: Mapping[str, str] | None = None,
    without: Sequence[str] = (),
    timeout: float = 60.0,
) -> Run:
    """``argv`` as its own process with only the daemon's client environment (plus ``env``,
    minus ``without``), from an empty HOME."""
    client_env = {**daemon.client_env(profile), **(env or {})}
    for variable in without:
        client_env.pop(variable, None)
    Path(client_env["HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = subprocess.run(
            list(argv),
            env=client_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=CLIENTS_DIR,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        # subprocess.run has killed it; keep what it said so far for the assertion message.
        return Run(name, None, _text(expired.stdout), _text(expired.stderr), time.monotonic() - started)
    return Run(name, result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def describe(run: Run, daemon: Daemon) -> str:
    """A failure message: the client's output and the daemon's log, secrets masked."""
    return failure_report(run.name, run.returncode, run.seconds, run.stdout, run.stderr, daemon)


def learn_served(daemon: Daemon, profile: str) -> None:
    """Fetch what the client was served (same cache entry) so the leak checks know it."""
    response = daemon.get(f"/creds/{profile}")
    assert response.status_code == 200, f"{response.text}\n{daemon.safe_output()[-3000:]}"


def assert_no_leak(run: Run, daemon: Daemon) -> None:
    leaked = daemon.leaked(run.stdout + run.stderr)
    assert not leaked, f"{run.name} printed secrets (masked): {leaked}"


def assert_served_the_chain(run: Run, daemon: Daemon, sts: StsProxy) -> None:
    """``run`` got prod-admin's identity from the daemon, which assumed the 3-hop chain."""
    used = last_used(daemon, "prod-admin")  # before learn_served asks for the profile too
    learn_served(daemon, "prod-admin")
    assert_no_leak(run, daemon)
    assert run.returncode == 0, describe(run, daemon)
    assert run.identity() == {"Account": "333333333333", "Arn": PROD_ADMIN_ARN}, describe(run, daemon)
    assert used, "the daemon served nothing: the identity came from elsewhere"
    assert sts.count("AssumeRole") == 3


def last_used(daemon: Daemon, profile: str) -> object:
    status = {p["name"]: p for p in daemon.get("/status").json()["profiles"]}
    return status[profile]["last_used"]


# -- aiobotocore ---------------------------------------------------------------------------


def require_aiobotocore() -> None:
    try:
        import aiobotocore  # noqa: F401
    except ImportError:
        skip_or_fail(f"aiobotocore (the project's test extra) is not installed for {sys.executable}")


def test_aiobotocore_gets_the_chained_cross_account_role(
    daemon: Daemon, sts: StsProxy, moto: MotoServer
) -> None:
    require_aiobotocore()
    run = run_client(
        "aiobotocore",
        [sys.executable, "-c", AIOBOTOCORE_IDENTITY],
        daemon,
        "prod-admin",
        env={"AWS_ENDPOINT_URL_STS": moto.url},
    )
    assert_served_the_chain(run, daemon, sts)


def test_aiobotocore_shows_the_daemons_error(daemon: Daemon, moto: MotoServer) -> None:
    """aiobotocore's container provider is botocore's, made async: same message, same 3 tries."""
    require_aiobotocore()
    run = run_client(
        "aiobotocore",
        [sys.executable, "-c", AIOBOTOCORE_IDENTITY],
        daemon,
        "no-such-profile",
        env={"AWS_ENDPOINT_URL_STS": moto.url},
    )
    assert_no_leak(run, daemon)
    assert run.returncode != 0, describe(run, daemon)
    assert "Received non 200 response 404 from container metadata" in run.stderr, describe(run, daemon)
    assert '"code":"ProfileNotFound"' in run.stderr, describe(run, daemon)
    assert "no-such-profile" in run.stderr, describe(run, daemon)


# -- Go SDK v1 and v2 (Debian bookworm) ----------------------------------------------------


@dataclass(frozen=True)
class GoBuilder:
    """Builds tests/clients/<name>/main.go offline, once per session, into ``out``."""

    out: Path
    cache: Path

    def binary(self, name: str) -> Path:
        package, sources = GO_SDKS[name]
        if not GO.exists():
            skip_or_fail(f"Go ({GO}, Debian package golang-go) is not installed")
        if not sources.is_dir():
            skip_or_fail(f"the Go SDK sources {sources} (Debian package {package}) are not installed")
        binary = self.out / name
        if binary.exists():
            return binary
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.out),
            "GOPATH": str(GOPATH),
            "GO111MODULE": "off",
            "GOPROXY": "off",
            "GOFLAGS": "-buildvcs=false",
            "GOCACHE": str(self.cache),
            "CGO_ENABLED": "0",
        }
        source = CLIENTS_DIR / name / "main.go"
        result = subprocess.run(
            [str(GO), "build", "-o", str(binary), str(source)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"go build {source} failed:\n{result.stdout}{result.stderr}"
        return binary


@pytest.fixture(scope="session")
def go_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoBuilder]:
    """The build cache lives in ~/.cache so that a later session builds in well under a second
    (a cold build of the v1 program takes ~20 s on 2 cores)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rolebroker-tests" / "go-build"
    cache.mkdir(parents=True, exist_ok=True)
    yield GoBuilder(tmp_path_factory.mktemp("go-bin"), cache)


go_sdks = pytest.mark.parametrize("name", sorted(GO_SDKS))


@go_sdks
def test_go_sdk_gets_the_chained_cross_account_role(
    name: str, go_build: GoBuilder, daemon: Daemon, sts: StsProxy, moto: MotoServer
) -> None:
    binary = go_build.binary(name)
    run = run_client(name, [str(binary), moto.url], daemon, "prod-admin")
    assert_served_the_chain(run, daemon, sts)


@go_sdks
def test_go_sdk_unknown_profile(name: str, go_build: GoBuilder, daemon: Daemon, moto: MotoServer) -> None:
    """Go v2 decodes the daemon's JSON error into "code: message"; Go v1 drops it and says only
    that no provider in its chain worked, although it did ask the daemon."""
    binary = go_build.binary(name)
    run = run_client(name, [str(binary), moto.url], daemon, "no-such-profile")
    assert_no_leak(run, daemon)
    assert run.returncode == 1, describe(run, daemon)
    assert "code=ProfileNotFound" in daemon.output(), describe(run, daemon)
    if name == "go-v2":
        assert "ProfileNotFound: no AWS profile named 'no-such-profile'" in run.stderr, describe(run, daemon)
    else:
        assert "NoCredentialProviders: no valid providers in chain" in run.stderr, describe(run, daemon)
        assert "ProfileNotFound" not in run.stderr, describe(run, daemon)


@go_sdks
def test_go_sdk_ignores_the_token_file(
    name: str, go_build: GoBuilder, daemon: Daemon, moto: MotoServer
) -> None:
    """Neither bookworm Go SDK reads AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (v1 1.44 never
    did; v2 gained it after 1.17): the request carries no token and the daemon refuses it.
    v2 shows what to set; v1 hides it. So keep exporting AWS_CONTAINER_AUTHORIZATION_TOKEN."""
    binary = go_build.binary(name)
    run = run_client(
        name,
        [str(binary), moto.url],
        daemon,
        "prod",
        env={"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(daemon.home.token_file)},
        without=["AWS_CONTAINER_AUTHORIZATION_TOKEN"],
    )
    assert_no_leak(run, daemon)
    assert run.returncode == 1, describe(run, daemon)
    assert "code=MissingToken" in daemon.output(), describe(run, daemon)
    if name == "go-v2":
        assert "MissingToken: send the token in the Authorization header" in run.stderr, describe(run, daemon)
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" in run.stderr, describe(run, daemon)
    else:
        assert "NoCredentialProviders: no valid providers in chain" in run.stderr, describe(run, daemon)


# -- rclone (Debian, on Go SDK v1) ---------------------------------------------------------


def test_rclone_s3_with_env_auth(daemon: Daemon, moto: MotoServer) -> None:
    """``env_auth`` reaches Go SDK v1's container provider: rclone makes and lists a bucket
    in moto's S3 with the chained role's credentials. Provider "Other", not "AWS": rclone 1.60
    forces virtual-hosted buckets for AWS (``force_path_style`` is overridden), which would
    send a DNS query for BUCKET.127.0.0.1 instead of reaching moto on loopback."""
    if not RCLONE.exists():
        skip_or_fail(f"rclone ({RCLONE}, Debian package rclone) is not installed")
    remote = {
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_MOTO_TYPE": "s3",
        "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
        "RCLONE_CONFIG_MOTO_ENV_AUTH": "true",
        "RCLONE_CONFIG_MOTO_ENDPOINT": moto.url,
        "RCLONE_CONFIG_MOTO_REGION": "us-east-1",
        "RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE": "true",
    }
    # Bounded: one try each, so a failure shows in seconds rather than after rclone's retries.
    bounded = ["--retries", "1", "--low-level-retries", "1", "--contimeout", "5s", "--timeout", "10s"]
    bucket = f"rolebroker-rclone-{secrets.token_hex(6)}"
    mkdir = run_client(
        "rclone", [str(RCLONE), "mkdir", f"moto:{bucket}", *bounded], daemon, "prod-admin", env=remote
    )
    # The credentials came from the daemon (nothing else in this environment holds any; moto
    # would accept any): it served the profile before this test asked for it itself.
    used = last_used(daemon, "prod-admin")
    learn_served(daemon, "prod-admin")
    assert_no_leak(mkdir, daemon)
    assert mkdir.returncode == 0, describe(mkdir, daemon)
    lsd = run_client("rclone", [str(RCLONE), "lsd", "moto:", *bounded], daemon, "prod-admin", env=remote)
    assert_no_leak(lsd, daemon)
    assert lsd.returncode == 0, describe(lsd, daemon)
    assert bucket in lsd.stdout.split(), describe(lsd, daemon)
    assert used, describe(mkdir, daemon)
