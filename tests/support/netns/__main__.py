"""``python -m tests.support.netns``: ``serverless`` inside the namespace, ``run`` on the host."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support import netns
from tests.support.netns.outer import run_serverless_in_namespace
from tests.support.netns.run import inner_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns", description=netns.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inner = sub.add_parser("serverless", help="(inside the namespace) deploy + remove, write a report")
    inner.add_argument("--workdir", type=Path, required=True)
    inner.add_argument("--result", type=Path, required=True)
    inner.add_argument("--outer-mount-ns", required=True)
    outer = sub.add_parser("run", help="(on the host) run the serverless check in a namespace")
    outer.add_argument("--workdir", type=Path, required=True)
    outer.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    if args.command == "serverless":
        return inner_main(args.workdir, args.result, args.outer_mount_ns)
    run = run_serverless_in_namespace(args.workdir, args.timeout)
    print(run.output)
    print(json.dumps({k: v for k, v in run.report.items() if k != "log_tails"}, indent=2))
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
