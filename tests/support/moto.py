"""A real moto server process on loopback: the STS (and more) the tests use."""

from __future__ import annotations

import os
import shutil
import sys

from tests.support.procs import ManagedProcess, free_port, wait_for_port


def moto_argv(host: str, port: int) -> list[str]:
    """The moto server command, listening on ``host:port``."""
    exe = shutil.which("moto_server")
    return [*([exe] if exe else [sys.executable, "-m", "moto.server"]), "-H", host, "-p", str(port)]


def moto_env() -> dict[str, str]:
    """This environment without AWS_*: moto must not pick up anything of the developer's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(moto_argv("127.0.0.1", self.port), moto_env())
        wait_for_port(self.port, timeout=30)

    def stop(self) -> None:
        self.process.cleanup()
