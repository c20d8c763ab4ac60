"""``rolebroker demo`` as a user runs it: a real process with its embedded moto, the exact
lines it prints run in bash, then SIGTERM: it exits cleanly and takes moto and its files."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.cli import run_cli
from tests.support.daemon import REPO, AwsHome
from tests.support.procs import ManagedProcess, free_port


def demo_env(home: AwsHome, token_file: Path) -> dict[str, str]:
    """A user shell with a real-looking ~/.aws that the demo must not use or touch."""
    return {
        **home.env(),
        "ROLEBROKER_TOKEN_FILE": str(token_file),
        "AWS_PROFILE": "users-real-profile",
        "AWS_ACCESS_KEY_ID": "AKIAUSERSOWNKEY00000",
        "AWS_SECRET_ACCESS_KEY": "usersOwnSecret0000000000000000000000000",
    }


def wait_for(process: ManagedProcess, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in process.output():
        assert process.running(), f"the demo exited:\n{process.output()}"
        assert time.monotonic() < deadline, f"no {text!r} from the demo:\n{process.output()}"
        time.sleep(0.1)
    return process.output()


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_demo_serves_a_cross_account_chain_and_cleans_up(tmp_path: Path) -> None:
    home = AwsHome(tmp_path / "home")
    home.write("[profile mine]\nregion = eu-west-3\n", "[mine]\naws_access_key_id = AKIAMINE\n")
    users_files = {p: p.read_bytes() for p in (home.config_path, home.credentials_path)}
    users_token = tmp_path / "private" / "token"
    port = free_port()
    env = demo_env(home, users_token)
    demo = ManagedProcess(
        [sys.executable, "-m", "rolebroker", "demo", "--port", str(port)], env, cwd=tmp_path
    )
    try:
        banner = wait_for(demo, "Try, in another terminal:")
        sts_url = re.search(r"local STS\s+(http://127\.0\.0\.1:\d+)", banner)
        config = re.search(r"AWS config\s+(\S+)", banner)
        token_line = re.search(r"token file\s+(\S+)", banner)
        assert sts_url and config and token_line, banner
        sts_port = int(sts_url.group(1).rsplit(":", 1)[1])
        config_dir = Path(config.group(1)).parent
        assert config_dir.stat().st_mode & 0o777 == 0o700
        # The demo's token is its own, beside its AWS config: the user's token file (here
        # ROLEBROKER_TOKEN_FILE, the real daemon's) is neither read nor created.
        token_file = Path(token_line.group(1))
        assert token_file.parent == config_dir
        assert not users_token.exists() and not users_token.parent.exists()

        token = token_file.read_text()
        served = {
            name: httpx.get(
                f"http://127.0.0.1:{port}/creds/{name}", headers={"Authorization": token}, timeout=20
            )
            for name in ("dev", "prod")
        }
        assert served["dev"].status_code == 200, served["dev"].text
        assert served["prod"].status_code == 200, served["prod"].text
        assert served["dev"].json()["AccountId"] == "111111111111"
        assert served["prod"].json()["AccountId"] == "222222222222"

        demo.signal(signal.SIGTERM)
        assert demo.proc.wait(20) == 0, demo.output()
        output = demo.output()
        assert "rolebroker demo stopped" in output
        assert "Traceback" not in output
        for secret in (token, *(r.json()["SecretAccessKey"] for r in served.values())):
            assert secret not in output, "the demo printed a secret"
        assert refuses(sts_port), "moto is still listening"
        assert refuses(port)
        assert not config_dir.exists()  # the config, the credentials and the token
        assert {p: p.read_bytes() for p in users_files} == users_files  # ~/.aws untouched
    finally:
        demo.cleanup()


def printed_commands(banner: str) -> list[str]:
    """The indented lines after "Try, in another terminal:", in order."""
    tail = banner.split("Try, in another terminal:", 1)[1]
    return [line.strip() for line in tail.splitlines() if line.startswith("  ")]


def test_demo_as_make_demo_runs_it_writes_nothing_in_home_and_its_lines_work(tmp_path: Path) -> None:
    """`make demo` runs .venv/bin/rolebroker with the user's environment: no XDG variables
    (ssh, macOS), ROLEBROKER_PORT set. Another terminal, with nothing of the demo or the
    venv on its PATH, runs the printed lines exactly as printed."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    installed = Path(sys.executable).parent / "rolebroker"
    assert installed.is_file(), "the test venv has no rolebroker command: make install"
    system_path = "/usr/local/bin:/usr/bin:/bin"
    user_env = {"PATH": system_path, "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    demo = ManagedProcess([str(installed), "demo"], {**user_env, "ROLEBROKER_PORT": str(port)}, cwd=tmp_path)
    try:
        banner = wait_for(demo, "Try, in another terminal:")
        assert f"http://127.0.0.1:{port}" in banner  # ROLEBROKER_PORT honoured
        commands = printed_commands(banner)
        curl, status, env_line, whoami, *aws_line = commands
        assert curl.startswith("curl ") and env_line.startswith("eval "), commands
        assert f"--port {port}" in env_line and "--token-file" in env_line
        assert "boto3" in whoami

        def in_another_terminal(script: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", "-c", f"set -eo pipefail; {script}"],
                env=user_env,
                capture_output=True,
                text=True,
                timeout=90,
            )

        fetched = in_another_terminal(curl)
        assert json.loads(fetched.stdout)["AccountId"] == "222222222222", fetched.stderr
        shown = in_another_terminal(status)
        assert shown.returncode == 0 and "prod" in shown.stdout, shown.stderr
        prod_role = "arn:aws:sts::222222222222:assumed-role/demo-deployer/"
        identity = in_another_terminal(f"{env_line}; {whoami}")
        assert identity.returncode == 0, identity.stderr[-2000:]
        assert identity.stdout.strip().startswith(prod_role), identity.stdout
        if aws_line:  # printed only where an aws CLI is installed
            (aws,) = aws_line
            by_cli = in_another_terminal(f"{env_line}; {aws} --output json")
            assert by_cli.returncode == 0, by_cli.stderr[-2000:]
            assert json.loads(by_cli.stdout)["Arn"].startswith(prod_role)

        demo.signal(signal.SIGTERM)
        assert demo.proc.wait(20) == 0, demo.output()
        assert "Traceback" not in demo.output()
        written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
        assert written == [], f"the demo wrote into HOME: {written}"
    finally:
        demo.cleanup()


def test_demo_without_moto_says_how_to_install_it(tmp_path: Path) -> None:
    fake = tmp_path / "no-moto" / "moto"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named moto (simulated)')\n")
    env = {**AwsHome(tmp_path / "home").env(), "PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO / 'src'}"}
    result = run_cli("demo", "--port", str(free_port()), env=env)
    assert result.returncode == 1
    assert "make demo" in result.stderr
    assert "pipx inject rolebroker 'moto[server]'" in result.stderr
    assert "rolebroker[demo]" not in result.stderr  # not on PyPI: that line cannot work
    assert "Traceback" not in result.stderr


def test_demo_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("demo", "--port", str(port), env=AwsHome(tmp_path / "home").env())
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr
    assert f"ROLEBROKER_PORT={port + 1} make demo" in result.stderr
    assert f"demo --port {port + 1}" in result.stderr
