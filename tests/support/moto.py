"""A real moto server process on loopback: the STS (and more) the tests use."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request

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

    def reset(self) -> None:
        self._post("/moto-api/reset")

    def _post(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    def get_json(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.cleanup()
