"""The CLI as users run it: real ``python -m rolebroker`` processes against the real daemon."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rolebroker.cli.main import cli
from tests.conftest import StartDaemon
from tests.support.cli import cli_env, run_cli
from tests.support.daemon import CHAIN_CONFIG, AwsHome, Daemon
from tests.support.moto import MotoServer
from tests.support.procs import free_port
from tests.support.stsproxy import StsProxy

COMMANDS = (
    "env",
    "exec",
    "status",
    "creds",
    "credential-process",
    "export",
    "token",
    "reload",
    "doctor",
    "demo",
    "serve",
)

HOSTILE = {
    "AWS_PROFILE": "nonexistent",
    "AWS_ACCESS_KEY_ID": "AKIAHOSTILEPARENT000",
    "AWS_SECRET_ACCESS_KEY": "hostileParentSecret000000000000000000000",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/hostile",
}

EXIT_WITH_IDENTITY = (
    "import boto3, json, sys; print(json.dumps(boto3.client('sts').get_caller_identity())); sys.exit(7)"
)


def test_help_documents_every_command() -> None:
    result = run_cli("--help", env={"PATH": os.environ["PATH"], "PYTHONPATH": "src"})
    assert result.returncode == 0
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.MULTILINE), name
    for name in COMMANDS:
        sub = run_cli(name, "--help", env={"PATH": os.environ["PATH"], "PYTHONPATH": "src"})
        assert sub.returncode == 0, sub.stderr
        assert "Usage:" in sub.stdout


# -- exec ----------------------------------------------------------------------------------------


def test_exec_wins_over_a_hostile_parent_and_passes_the_exit_code(daemon: Daemon, moto: MotoServer) -> None:
    env = cli_env(daemon, **HOSTILE, AWS_ENDPOINT_URL_STS=moto.url)
    result = run_cli("exec", "prod-admin", "--", sys.executable, "-c", EXIT_WITH_IDENTITY, env=env)
    assert not daemon.leaked(result.stdout + result.stderr)
    assert result.returncode == 7, result.stderr[-2000:]
    identity = json.loads(result.stdout)
    assert identity["Arn"] == "arn:aws:sts::333333333333:assumed-role/admin/alice-admin"


def test_exec_replaces_itself_so_signals_reach_the_command(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rolebroker", "exec", "dev", "--", "sh", "-c", "echo $$; exec sleep 30"],
        env=cli_env(daemon),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == proc.pid  # the same process: no wrapper in between
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exec_without_a_command_runs_the_users_shell(daemon: Daemon, tmp_path: Path) -> None:
    shell = tmp_path / "myshell"
    shell.write_text(
        '#!/bin/sh\necho "shell for $ROLEBROKER_PROFILE via $AWS_CONTAINER_CREDENTIALS_FULL_URI"\n'
    )
    shell.chmod(0o755)
    result = run_cli("exec", "dev", env=cli_env(daemon, SHELL=str(shell)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"shell for dev via {daemon.creds_url('dev')}"


def test_exec_reports_what_stops_it_with_its_own_exit_codes(daemon: Daemon) -> None:
    missing = run_cli("exec", "dev", "--", "no-such-command-rolebroker", env=cli_env(daemon))
    assert missing.returncode == 127
    assert "command not found: no-such-command-rolebroker" in missing.stderr

    unknown = run_cli("exec", "no-such-profile", "--", "sh", "-c", "echo ran", env=cli_env(daemon))
    assert unknown.returncode == 125
    assert "ran" not in unknown.stdout
    assert "ProfileNotFound" in unknown.stderr


# -- status, creds, token ------------------------------------------------------------------------


BROKEN_PROFILE = "\n[profile orphan]\nrole_arn = arn:aws:iam::444444444444:role/x\nsource_profile = missing\n"


def test_status_table_and_json_show_state_and_errors_but_no_secret(daemon: Daemon) -> None:
    daemon.home.config_path.write_text(CHAIN_CONFIG + BROKEN_PROFILE)
    assert daemon.get("/creds/prod-admin").status_code == 200  # secrets the output must not show
    assert daemon.get("/creds/orphan").status_code == 400

    table = run_cli("status", env=cli_env(daemon))
    assert table.returncode == 0, table.stderr
    assert not daemon.leaked(table.stdout + table.stderr)
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines() if line.strip()}
    assert rows["PROFILE"] == [
        "PROFILE",
        "STATE",
        "EXPIRES",
        "IN",
        "LAST",
        "REFRESH",
        "LAST",
        "ERROR",
        "LAST",
        "CALLER",
    ]
    assert rows["prod-admin"][1] == "fresh"
    assert re.fullmatch(r"\d+m", rows["prod-admin"][2])
    assert rows["orphan"][1] == "error"
    assert rows["orphan"][4] == "SourceProfileNotFound"
    assert "orphan: SourceProfileNotFound: profile 'orphan' has source_profile = missing" in table.stdout

    as_json = run_cli("status", "--json", env=cli_env(daemon))
    assert as_json.returncode == 0
    assert not daemon.leaked(as_json.stdout)
    document = json.loads(as_json.stdout)
    profiles = {p["name"]: p for p in document["profiles"]}
    assert profiles["prod-admin"]["state"] == "fresh"
    assert profiles["orphan"]["last_error"]["code"] == "SourceProfileNotFound"


def test_creds_prints_what_curl_would_get(daemon: Daemon) -> None:
    served = daemon.get("/creds/prod").json()
    result = run_cli("creds", "prod", env=cli_env(daemon))
    assert result.returncode == 0
    assert json.loads(result.stdout) == served
    assert result.stderr == ""

    failing = run_cli("creds", "no-such-profile", env=cli_env(daemon))
    assert failing.returncode != 0
    assert failing.stdout == ""
    assert "ProfileNotFound" in failing.stderr


def test_token_prints_the_token_without_a_newline_when_piped(daemon: Daemon) -> None:
    result = run_cli("token", env=cli_env(daemon))
    assert result.returncode == 0
    assert result.stdout == daemon.token  # exact: no trailing newline
    assert result.stdout.strip() == result.stdout


def test_a_token_file_the_daemon_does_not_use_is_explained(daemon: Daemon, tmp_path: Path) -> None:
    other = tmp_path / "other-token"
    other.write_text("x" * 43)
    result = run_cli("status", "--token-file", str(other), env=cli_env(daemon))
    assert result.returncode != 0
    assert "not the one the daemon" in result.stderr and "--token-file" in result.stderr
    assert not daemon.leaked(result.stderr)


# -- the daemon is not running ---------------------------------------------------------------------


DAEMON_COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("creds", "prod"),
    ("credential-process", "prod"),
    ("export", "prod", "--format", "fish"),
    ("reload",),
    ("env", "prod"),
    ("exec", "prod", "--", "true"),
    ("doctor", "prod"),
]


def assert_says_how_to_start(result: subprocess.CompletedProcess[str], port: int) -> None:
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert f"not running on 127.0.0.1:{port}" in text, text
    assert "systemctl --user start rolebroker" in text
    assert f"rolebroker serve --port {port}" in text
    assert "Traceback" not in text


def test_every_command_says_how_to_start_a_daemon_that_never_ran(tmp_path: Path) -> None:
    home = AwsHome(tmp_path / "home")
    home.write()
    port = free_port()
    env = {**home.env(), "ROLEBROKER_PORT": str(port)}
    for args in [*DAEMON_COMMANDS, ("token",)]:
        assert_says_how_to_start(run_cli(*args, env=env), port)
    assert not home.token_file.exists()


def test_every_command_says_how_to_start_a_stopped_daemon(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    daemon.stop()  # the token file stays behind
    env = cli_env(daemon)
    for args in DAEMON_COMMANDS:
        result = run_cli(*args, env=env)
        assert_says_how_to_start(result, daemon.port)
        assert not daemon.leaked(result.stdout + result.stderr)


def test_status_explains_a_port_where_something_else_answers(sts: StsProxy, tmp_path: Path) -> None:
    home = AwsHome(tmp_path / "home")
    result = run_cli("status", env={**home.env(), "ROLEBROKER_PORT": str(sts.port)})
    assert result.returncode != 0
    assert "not rolebroker" in result.stderr


@pytest.mark.parametrize("args", [("status", "--port", "99999"), ("env", "prod", "--port", "x")])
def test_bad_settings_are_usage_errors(args: tuple[str, ...], tmp_path: Path) -> None:
    home = AwsHome(tmp_path / "home")
    result = run_cli(*args, env=home.env())
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# -- options after the profile ---------------------------------------------------------------------

PROFILE_COMMANDS = [
    ("env", "prod"),
    ("exec", "prod"),
    ("creds", "prod"),
    ("credential-process", "prod"),
    ("export", "prod"),
    ("mfa", "prod", "123456"),
    ("doctor", "prod"),
]


def test_every_command_with_a_profile_takes_the_daemon_options_after_it(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment names a dead port and a missing token file: only the options given
    after the profile reach the daemon."""
    ran: list[list[str]] = []

    def fake_exec(_file: str, argv: list[str], environment: dict[str, str]) -> None:
        ran.append([*argv, environment["AWS_CONTAINER_CREDENTIALS_FULL_URI"]])
        sys.exit(0)

    monkeypatch.setattr(os, "execvpe", fake_exec)
    env = {
        **daemon.home.env(),
        "ROLEBROKER_PORT": str(free_port()),
        "ROLEBROKER_TOKEN_FILE": str(tmp_path / "missing-token"),
    }
    options = ["--port", str(daemon.port), "--token-file", str(daemon.home.token_file)]
    for args in PROFILE_COMMANDS:
        result = CliRunner().invoke(cli, [*args, *options], env=env)
        output = result.stdout + result.stderr
        assert not daemon.leaked(result.stderr)
        if args[0] == "mfa":  # reached the daemon: prod has no mfa_serial
            assert "MfaNotConfigured" in output, output
        elif args[0] == "doctor":
            assert "rolebroker serves 'prod': account 222222222222" in output, output
        else:
            assert result.exit_code == 0, f"{args}: {output}"
    assert ran == [[os.environ.get("SHELL") or "/bin/sh", daemon.creds_url("prod")]]


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["prod", "--port", "{port}", "--", "env", "--port", "x"], ["env", "--port", "x"]),
        (["--port", "{port}", "prod", "--", "env"], ["env"]),
        (["prod", "--port", "{port}", "env", "--port", "x"], ["env", "--port", "x"]),
        (["prod", "--port={port}", "--", "--port", "x"], ["--port", "x"]),
    ],
)
def test_exec_options_before_the_command_are_rolebrokers_the_rest_is_the_commands(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, args: list[str], command: list[str]
) -> None:
    ran: list[list[str]] = []

    def fake_exec(_file: str, argv: list[str], _environment: dict[str, str]) -> None:
        ran.append(list(argv))
        sys.exit(0)

    monkeypatch.setattr(os, "execvpe", fake_exec)
    env = {**daemon.home.env(), "ROLEBROKER_PORT": str(free_port())}
    argv = ["exec", *(a.replace("{port}", str(daemon.port)) for a in args)]
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 0, result.output
    assert ran == [command]


def test_exec_without_a_separator_passes_the_commands_options_on(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exec prod cmd --port x`: --port belongs to cmd, so the dead port in the environment is used."""
    monkeypatch.setattr(os, "execvpe", lambda *_: sys.exit(0))
    env = {**daemon.home.env(), "ROLEBROKER_PORT": str(free_port())}
    result = CliRunner().invoke(cli, ["exec", "prod", "cmd", "--port", str(daemon.port)], env=env)
    assert result.exit_code == 125
    assert "not running" in result.stderr


def test_exec_refuses_an_unknown_option_before_the_command(daemon: Daemon) -> None:
    result = CliRunner().invoke(cli, ["exec", "prod", "--frob", "--", "true"], env=daemon.home.env())
    assert result.exit_code == 2
    assert "No such option '--frob'" in result.stderr


def test_status_shows_why_there_are_no_profiles_when_the_config_is_broken_at_start(
    start_daemon: StartDaemon, aws_home: AwsHome
) -> None:
    aws_home.config_path.write_text("[profile prod\nrole_arn = x\n")
    daemon = start_daemon()
    result = run_cli("status", env=cli_env(daemon))
    assert result.returncode == 0, result.stderr
    assert "No profiles in the AWS config" not in result.stdout
    assert "No profiles: the daemon could not read the AWS config (ConfigFileError: cannot parse" in (
        result.stdout
    )
    assert str(aws_home.config_path) in result.stdout


def test_version_help_topic_and_serve_help_name_every_setting() -> None:
    from click.testing import CliRunner

    from rolebroker.cli.main import COMMAND_MODULES, cli
    from rolebroker.config import settable_settings

    runner = CliRunner()
    assert runner.invoke(cli, ["-V"]).output.startswith("rolebroker, version ")
    serve_help = runner.invoke(cli, ["serve", "--help"]).output
    manual = runner.invoke(cli, ["help"], prog_name="rolebroker").output
    for key, env_name, _default in settable_settings({}):
        assert key in serve_help and env_name in serve_help, key
        assert key in manual and env_name in manual, key
    for name in COMMAND_MODULES:
        if name != "help":
            assert f"Usage: rolebroker {name} " in manual, name
    assert "grants.json" in runner.invoke(cli, ["help", "files"]).output
    refused = runner.invoke(cli, ["help", "nope"])
    assert refused.exit_code == 2 and "settings, files" in refused.output
