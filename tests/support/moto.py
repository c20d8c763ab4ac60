"""A real moto server process on loopback: the STS (and more) the tests use."""

from __future__ import annotations

import os
import shutil
import sys

from tests.support.procs import ManagedProcess, free_port, wait_for_port


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server")
        argv = [exe] if exe else [sys.executable, "-m", "moto.server"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = ManagedProcess([*argv, "-H", "127.0.0.1", "-p", str(self.port)], env)
        wait_for_port(self.port, timeout=30)

    def stop(self) -> None:
        self.process.cleanup()
