"""Shared fixtures: a real moto server, a fault-injecting STS proxy in front of it, an
isolated AWS home, and the real daemon process. Everything started here is stopped here,
also when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.awsconfig import AwsFiles
from tests.support.awsconfig import aws_files as _aws_files
from tests.support.daemon import CHAIN_CONFIG, CHAIN_CREDENTIALS, AwsHome, Daemon
from tests.support.moto import MotoServer
from tests.support.stsproxy import StsProxy


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sts(moto: MotoServer) -> Iterator[StsProxy]:
    proxy = StsProxy(moto.url)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def aws_home(tmp_path: Path) -> AwsHome:
    home = AwsHome(tmp_path / "home")
    home.write(CHAIN_CONFIG, CHAIN_CREDENTIALS)
    return home


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(aws_home: AwsHome, sts: StsProxy) -> Iterator[StartDaemon]:
    """``start_daemon(*args, env=..., sts_url=...)``: the daemon behind the STS proxy.

    At teardown every daemon is stopped and its output is checked for every secret it
    served, the base secret key and the auth token.
    """
    daemons: list[Daemon] = []

    def start(
        *args: str,
        env: Mapping[str, str] | None = None,
        sts_url: str | None = None,
        home: AwsHome | None = None,
    ) -> Daemon:
        daemon = Daemon(
            home or aws_home, args=list(args), extra_env=dict(env or {}), sts_url=sts_url or sts.url
        )
        daemons.append(daemon)
        return daemon

    try:
        yield start
    finally:
        leaks: list[str] = []
        for daemon in daemons:
            daemon.stop()
            leaks += daemon.leaked()
        assert not leaks, f"secrets leaked into the daemon's output: {leaks}"


@pytest.fixture
def daemon(start_daemon: StartDaemon) -> Daemon:
    return start_daemon()


@pytest.fixture
def aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AwsFiles:
    """In-process tests: this test's own AWS config and credentials files (``.write()``)."""
    return _aws_files(tmp_path / "aws", monkeypatch)
