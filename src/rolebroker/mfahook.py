"""``mfa_process``: a user's command that prints an MFA code (e.g. ``ykman oath accounts
code``), run like botocore runs ``credential_process``. Blocking: the MFA watcher runs it in
a worker thread and kills it when the daemon stops."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Callable

from rolebroker.mfacode import valid_code

HOOK_TIMEOUT = 60.0
"""An mfa_process may wait for a touch of a hardware key."""


class MfaProcessError(Exception):
    """The hook gave no code; the message never contains its output."""


def run_mfa_process(
    command: str,
    timeout: float = HOOK_TIMEOUT,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
) -> str:
    """Run ``command`` split like a shell would but without one, and return the code it
    prints last (six digits, mfacode.valid_code). Its whole process group dies on a
    timeout; ``on_start`` lets the daemon kill it when it stops."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise MfaProcessError(f"cannot parse the command: {exc}") from None
    if not argv:
        raise MfaProcessError("the command is empty")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
    except OSError as exc:
        raise MfaProcessError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if on_start is not None:
        on_start(proc)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        raise MfaProcessError(f"it did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise MfaProcessError(f"it exited with status {proc.returncode}; run it by hand to see why")
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines or not valid_code(lines[-1]):
        raise MfaProcessError("its last line of output is not a 6-digit code")
    return lines[-1]


def kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
