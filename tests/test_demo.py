"""``rolebroker demo`` as a user runs it: a real process with its embedded moto, the exact
lines it prints run in bash, then SIGTERM: it exits cleanly and takes moto and its files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.cli import rolebroker_on_path, run_cli
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
    token_file = tmp_path / "private" / "token"
    port = free_port()
    env = demo_env(home, token_file)
    demo = ManagedProcess(
        [sys.executable, "-m", "rolebroker", "demo", "--port", str(port)], env, cwd=tmp_path
    )
    try:
        banner = wait_for(demo, "Try, in another terminal:")
        sts_url = re.search(r"local STS\s+(http://127\.0\.0\.1:\d+)", banner)
        config = re.search(r"AWS config\s+(\S+)", banner)
        assert sts_url and config, banner
        sts_port = int(sts_url.group(1).rsplit(":", 1)[1])
        config_dir = Path(config.group(1)).parent
        assert config_dir.stat().st_mode & 0o777 == 0o700

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

        lines = [line.strip() for line in banner.splitlines() if line.startswith("  ")]
        curl = next(line for line in lines if line.startswith("curl "))
        env_line = next(line for line in lines if line.startswith("eval "))
        aws_line = next(line for line in lines if line.startswith("aws "))
        assert f"--port {port}" in env_line and f"--token-file {token_file}" in env_line

        # Another terminal: no ROLEBROKER_TOKEN_FILE there, only the flags the banner printed.
        shell_env = rolebroker_on_path(tmp_path / "bin", {**home.env(), "AWS_PROFILE": "users-real-profile"})
        fetched = subprocess.run(
            ["bash", "-c", curl], env=shell_env, capture_output=True, text=True, timeout=60
        )
        assert json.loads(fetched.stdout)["AccountId"] == "222222222222", fetched.stderr
        has_aws = shutil.which("aws", path=shell_env["PATH"]) is not None
        if has_aws:
            script = f"set -e; {env_line}; {aws_line} --output json"
            identity = subprocess.run(
                ["bash", "-c", script], env=shell_env, capture_output=True, text=True, timeout=90
            )
            assert identity.returncode == 0, identity.stderr[-2000:]
            assert json.loads(identity.stdout)["Arn"].startswith(
                "arn:aws:sts::222222222222:assumed-role/demo-deployer/"
            )

        demo.signal(signal.SIGTERM)
        assert demo.proc.wait(20) == 0, demo.output()
        output = demo.output()
        assert "rolebroker demo stopped" in output
        assert "Traceback" not in output
        for secret in (token, *(r.json()["SecretAccessKey"] for r in served.values())):
            assert secret not in output, "the demo printed a secret"
        assert refuses(sts_port), "moto is still listening"
        assert refuses(port)
        assert not config_dir.exists()
        assert {p: p.read_bytes() for p in users_files} == users_files  # ~/.aws untouched
    finally:
        demo.cleanup()
    if not has_aws:
        pytest.skip("the aws CLI is not installed: everything but the banner's aws line was checked")


def test_demo_without_moto_says_how_to_install_it(tmp_path: Path) -> None:
    fake = tmp_path / "no-moto" / "moto"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named moto (simulated)')\n")
    env = {**AwsHome(tmp_path / "home").env(), "PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO / 'src'}"}
    result = run_cli("demo", "--port", str(free_port()), env=env)
    assert result.returncode == 1
    assert "pip install 'rolebroker[demo]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("demo", "--port", str(port), env=AwsHome(tmp_path / "home").env())
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr
