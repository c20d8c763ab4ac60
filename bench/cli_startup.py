"""Wall time of the commands a shell start runs, against a running daemon: prints figures,
asserts nothing.

    python bench/cli_startup.py [--runs 20]

``eval "$(rolebroker env prod)"`` in a shell rc runs on every new shell, so ``token``,
``env prod`` and ``status`` are timed (median of --runs real processes each) next to
``python -c pass`` measured in the same run, with the 2.5x target. The pieces are measured
too, so a miss can be explained: the floor (the standard modules any client that checks the
listener proof must import), dataclasses (rolebroker's settings are one), importing click,
importing the CLI, and one request to the daemon (proof and request on one connection),
in-process. ``token``, ``env`` and ``status`` run through quick.py, without click.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.daemon import AwsHome, Daemon
from tests.support.moto import MotoServer

TARGET = 2.5
"""A command may take at most this many times ``python -c pass``."""


def median_ms(argv: Sequence[str], env: dict[str, str], runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def round_trip_ms(env: dict[str, str], runs: int) -> float:
    """One authorized request (GET /status, proof first) in this process: the network part."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from rolebroker.cli.client import DaemonClient
        from rolebroker.config import load_settings

        client = DaemonClient(load_settings({}))
        client.token()
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            client.request("GET", "/status")
            timings.append((time.perf_counter() - start) * 1000)
        return statistics.median(timings)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def report(rolebroker: list[str], env: dict[str, str], runs: int) -> None:
    python = median_ms([sys.executable, "-c", "pass"], env, runs)
    print(f"CLI start-up, median of {runs} runs each (target: at most {TARGET}x python -c pass)")
    print(f"  {'python -c pass':<40}{python:6.1f} ms")
    for code in (
        "import json, socket, hmac, secrets",  # the floor: what any client that checks the proof needs
        "import dataclasses",
        "import click",
        "import rolebroker.cli.main",
    ):
        took = median_ms([sys.executable, "-c", code], env, runs)
        print(f"  {'python -c ' + repr(code):<40}{took:6.1f} ms  ({took / python:.1f}x)")
    print(f"  {'one proven request (in-process)':<40}{round_trip_ms(env, runs):6.1f} ms")
    for command in (["token"], ["env", "prod"], ["status"]):
        took = median_ms([*rolebroker, *command], env, runs)
        verdict = "meets" if took <= TARGET * python else "misses"
        print(
            f"  {'rolebroker ' + ' '.join(command):<40}{took:6.1f} ms  ({took / python:.1f}x, "
            f"{verdict} the {TARGET}x target)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("rolebroker")
    rolebroker = [str(script)] if script.exists() else [sys.executable, "-m", "rolebroker"]

    moto = MotoServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home = AwsHome(Path(tmp))
            home.write()
            daemon = Daemon(home, sts_url=moto.url)
            try:
                env = {**home.env(), "ROLEBROKER_PORT": str(daemon.port)}
                subprocess.run([*rolebroker, "env", "prod"], env=env, capture_output=True, check=True)  # warm
                report(rolebroker, env, args.runs)
            finally:
                daemon.stop()
                daemon.process.cleanup()
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
