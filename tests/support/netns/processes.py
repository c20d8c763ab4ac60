"""Helper processes, readiness polling and plain loopback HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


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


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """GET on loopback, never through a proxy; errors come back as (status, body)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
