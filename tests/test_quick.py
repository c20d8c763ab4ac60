"""quick.py answers the plain forms of ``token``, ``env`` and ``status`` without click, and
must answer exactly as the click commands do, or decline.

The parser is checked form by form; then each form runs twice against the real daemon, as
``rolebroker`` (quick path) and through the click group directly, and the two outputs,
error messages and exit codes must agree (times and fresh grant names normalised).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rolebroker.cli import quick
from tests.support.cli import cli_env
from tests.support.daemon import Daemon

PORT_AND_FILE = {"--port": "9950", "--token-file": "/t"}
FISH = {"--shell": "fish"}
TTL = {"--ttl": "2h"}
CLICK = "import sys; from rolebroker.cli.main import cli; sys.argv[0] = 'rolebroker'; cli()"


@pytest.mark.parametrize(
    ("argv", "command", "arguments", "flags", "values"),
    [
        (["token"], "token", (), set(), {}),
        (["token", "--port", "9950"], "token", (), set(), {"--port": "9950"}),
        (["token", "--port=9950", "--token-file=/t"], "token", (), set(), PORT_AND_FILE),
        (["status", "--json"], "status", (), {"--json"}, {}),
        (["env", "prod"], "env", ("prod",), set(), {}),
        (["env", "--shell", "fish", "prod", "--no-check"], "env", ("prod",), {"--no-check"}, FISH),
        (["env", "prod", "--ttl=2h", "--export-token-file"], "env", ("prod",), {"--export-token-file"}, TTL),
    ],
)
def test_parse_reads_the_plain_forms(
    argv: list[str], command: str, arguments: tuple[str, ...], flags: set[str], values: dict[str, str]
) -> None:
    parsed = quick.parse(argv)
    assert parsed is not None
    assert (parsed.command, parsed.arguments, set(parsed.flags), parsed.values) == (
        command,
        arguments,
        flags,
        values,
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["-V"],
        ["grant", "prod"],  # not a hot command
        ["token", "--rotate"],  # a flag handled by click only
        ["token", "--help"],
        ["token", "-h"],
        ["token", "extra"],  # click's usage error
        ["status", "--json=yes"],  # a flag with a value
        ["status", "--json", "--json"],  # repeated
        ["env"],  # missing PROFILE
        ["env", "a", "b"],
        ["env", "prod", "--shell"],  # missing value
        ["env", "prod", "--port", "--no-check"],  # an option where a value should be
        ["env", "--", "prod"],
        ["env", "prod", "--sh", "fish"],  # click does not complete prefixes either
        ["env", "pro\x1bd"],  # a control character: click strips escape sequences from echoes
        ["token", "--token-file="],  # an empty value: click reads it its own way
    ],
)
def test_parse_declines_everything_else(argv: list[str]) -> None:
    assert quick.parse(argv) is None


def test_run_declines_values_click_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any request: click then prints its usage error."""
    monkeypatch.setenv("ROLEBROKER_PORT", "1")
    assert quick.run(["token", "--port", "x"]) is None
    assert quick.run(["env", "prod", "--shell", "tcsh"]) is None
    assert quick.run(["env", "prod", "--ttl", "soon"]) is None
    monkeypatch.setenv("ROLEBROKER_PORT", "not-a-port")
    assert quick.run(["token"]) is None  # a bad setting is click's usage error


def _run(argv: list[str], env: dict[str, str], *, through_click: bool) -> tuple[str, str, int]:
    prefix = [sys.executable, "-c", CLICK] if through_click else [sys.executable, "-m", "rolebroker"]
    result = subprocess.run(
        [*prefix, *argv], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    return result.stdout, result.stderr, result.returncode


def _normal(text: str) -> str:
    """Times and counters move between two runs; fresh grants and their names differ."""
    text = re.sub(r"rbg1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", "GRANT", text)
    text = re.sub(r"(env-[\w.@:+-]+-)[0-9a-f]{6}", r"\1NAME", text)
    return re.sub(r"\d+", "N", text)


@pytest.mark.parametrize(
    "argv",
    [
        ["token"],
        ["status"],
        ["status", "--json"],
        ["env", "prod"],
        ["env", "prod", "--shell", "fish"],
        ["env", "--no-check", "prod", "--shell=zsh"],
        ["env", "prod", "--ttl", "2h"],
        ["env", "nosuchprofile"],  # the daemon's ProfileNotFound, as one line
    ],
)
def test_quick_and_click_answer_alike(daemon: Daemon, argv: list[str]) -> None:
    env = cli_env(daemon, SHELL="/bin/bash")
    fast = _run(argv, env, through_click=False)
    slow = _run(argv, env, through_click=True)
    assert fast[2] == slow[2], (fast, slow)
    assert _normal(fast[0]) == _normal(slow[0])
    assert _normal(fast[1]) == _normal(slow[1])
    if argv[-1] == "nosuchprofile":
        assert fast[2] == 1 and fast[1].startswith("Error: rolebroker cannot serve profile 'nosuchprofile'")
    else:
        assert fast[2] == 0 and fast[0]
    assert not daemon.leaked(fast[1] + slow[1])


def test_quick_and_click_fail_alike_without_a_daemon(daemon: Daemon) -> None:
    """Nothing on the port (stopped daemon): the same one-line error and status 1."""
    env = cli_env(daemon)
    daemon.stop()
    for argv in (["status"], ["env", "prod"]):
        fast = _run(argv, env, through_click=False)
        slow = _run(argv, env, through_click=True)
        assert fast == slow
        assert fast[2] == 1 and fast[1].startswith("Error: rolebroker is not running on 127.0.0.1:"), fast
