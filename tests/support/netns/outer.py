"""The outer side: unshare with a hard timeout, leftover-process check."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.netns.constants import REPO, RUN_MARKER, SERVERLESS_JS


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
