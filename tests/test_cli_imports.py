"""The CLI stays light: ``eval "$(rolebroker env prod)"`` runs on every shell start.

Two checks: statically (ast), the module-level imports of rolebroker.cli.* form no cycle
and never reach a daemon-side module; and, in real processes against the real daemon,
``token``, ``env`` and ``status`` never import the daemon's heavy dependencies, nor click for
their plain forms (quick.py) (read from ``python -X importtime``, which lists every module a
process imports, lazy ones too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import cli_env
from tests.support.daemon import Daemon

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "rolebroker"

NO_HTTP_CLIENT = ("http.client", "ssl", "email")
"""What ``import http.client`` would load: the quick forms talk to the daemon through wire.py.
(``env`` also reads the AWS config with botocore.configloader, which loads none of them.)"""

HEAVY = (
    "botocore.session",
    "botocore.client",
    "uvicorn",
    "fastapi",
    "starlette",
    "cachetools",
    "asyncio",
)
"""What the daemon needs and a shell start must not pay for."""

DAEMON_SIDE = {
    "rolebroker.broker",
    "rolebroker.cache",
    "rolebroker.connections",
    "rolebroker.container_server",
    "rolebroker.daemon",
    "rolebroker.demo",
    "rolebroker.hops",
    "rolebroker.listeners",
    "rolebroker.mfa",
    "rolebroker.profiles",
    "rolebroker.refresher",
    "rolebroker.server",
    "rolebroker.statusview",
    "rolebroker.warmset",
}


def _module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_imports(name: str) -> Iterator[str]:
    """rolebroker modules ``name`` imports when it is imported: module level, outside
    functions and ``if TYPE_CHECKING`` (lazy imports inside functions are the point)."""
    path = _module_file(name)
    assert path is not None, name
    tree = ast.parse(path.read_text(), str(path))
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            body.extend(node.orelse)
            continue
        if isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                body.extend(getattr(node, field, []))
            continue
        if isinstance(node, ast.ExceptHandler):
            body.extend(node.body)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("rolebroker"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rolebroker"):
            yield node.module
            for alias in node.names:  # `from rolebroker.cli import shellenv` imports a module
                if _module_file(f"{node.module}.{alias.name}") is not None:
                    yield f"{node.module}.{alias.name}"


def _graph(roots: list[str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in graph:
            continue
        graph[name] = set()
        for target in _top_level_imports(name):
            parts = target.split(".")
            # importing a.b.c first imports its packages a.b and a
            for depth in range(2, len(parts) + 1):
                module = ".".join(parts[:depth])
                # a package's own submodules importing through it is no cycle
                if _module_file(module) is not None and not (name + ".").startswith(module + "."):
                    graph[name].add(module)
                    todo.append(module)
    return graph


def _cli_modules() -> list[str]:
    return sorted(f"rolebroker.cli.{p.stem}" for p in (PACKAGE / "cli").glob("*.py") if p.stem != "__init__")


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(graph.get(name, ())):
            if (cycle := visit(target, [*path, name])) is not None:
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        if (cycle := visit(name, [])) is not None:
            return cycle
    return None


def test_cli_modules_import_no_cycle_and_nothing_of_the_daemon() -> None:
    graph = _graph(_cli_modules())
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph) or [])}"
    reached = set(graph)
    daemon_side = {m for m in reached if m in DAEMON_SIDE or m.split(".")[:2] == ["rolebroker", "hops"]}
    assert not daemon_side, f"the CLI imports daemon modules at module level: {sorted(daemon_side)}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def _imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


QUICK = [("token",), ("env", "prod"), ("status",), ("env", "prod", "--shell", "fish", "--no-check")]
"""Forms quick.py answers without click."""


@pytest.mark.parametrize("args", [*QUICK, ("audit", "--last", "1")])
def test_shell_start_commands_import_nothing_heavy(daemon: Daemon, args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rolebroker", *args],
        env=cli_env(daemon),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = _imported(result.stderr)
    assert "rolebroker.cli.quick" in imported  # the trace really is this command's
    if args in QUICK:  # the forms a shell start runs do not even load the CLI framework
        assert "click" not in imported and "rolebroker.cli.main" not in imported
        stdlib_http = sorted(
            m for m in imported if any(m == h or m.startswith(h + ".") for h in NO_HTTP_CLIENT)
        )
        assert not stdlib_http, f"rolebroker {' '.join(args)} imported {stdlib_http}"
        if args in (("env", "prod"), ("status",)):
            assert "rolebroker.cli.wire" in imported  # they did send their requests
    else:
        assert "rolebroker.cli.main" in imported
    heavy = sorted(m for m in imported if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"rolebroker {' '.join(args)} imported {heavy}"
    assert not daemon.leaked(result.stderr)
