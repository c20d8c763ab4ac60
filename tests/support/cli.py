"""The rolebroker CLI as a real process, and a ``rolebroker`` on PATH for shell lines."""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import click
from click.testing import CliRunner

from tests.support.daemon import Daemon


def cli_env(daemon: Daemon, **extra: str) -> dict[str, str]:
    """What a user's shell has: the isolated home, and the daemon's port in ROLEBROKER_PORT."""
    return {**daemon.home.env(), "ROLEBROKER_PORT": str(daemon.port), **extra}


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rolebroker", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def rolebroker_on_path(directory: Path, env: Mapping[str, str]) -> dict[str, str]:
    """A ``rolebroker`` executable in ``directory`` (this Python, this source tree), and
    ``env`` with it first on PATH, so tests can run the exact lines users are told to run."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "rolebroker"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m rolebroker "$@"\n')
    shim.chmod(0o755)
    return {**env, "PATH": f"{directory}{os.pathsep}{env.get('PATH', os.defpath)}"}


def rolebroker_command() -> click.Command:
    """The ``rolebroker`` click group, for in-process runs with ``CliRunner``. The installed
    entry point is quick.main, which hands every form it does not answer itself to this
    group (tests/test_quick.py proves the two answer alike)."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="rolebroker")
    assert entry.value == "rolebroker.cli.quick:main", entry.value
    from rolebroker.cli.main import cli

    return cli


def invoke_cli(*args: str, env: Mapping[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI in this process through click's CliRunner: as fast as a function call, with
    the result shaped like a finished process (returncode, stdout, stderr)."""
    result = CliRunner().invoke(rolebroker_command(), list(args), env=dict(env), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["rolebroker", *args], result.exit_code, result.stdout, result.stderr)
