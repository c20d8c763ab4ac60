"""Starting and always stopping the real processes the tests talk to."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.waiting import wait_until


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (IPv6 may be disabled outright)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    def listening() -> bool:
        with socket.create_connection((host, port), timeout=0.2):
            return True

    wait_until(listening, timeout, f"a listener on {host}:{port}", ignoring=(OSError,))


class ManagedProcess:
    """A child in its own process group, output to a file, killed with its group."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self._log = tempfile.NamedTemporaryFile(prefix="rolebroker-test-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        self.proc = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.running():
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it if it lingers; safe to call twice."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # children that outlived the leader
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)
