"""``rolebroker demo``: the real daemon against an embedded local STS (moto), so anyone can
try the whole flow without an AWS account and without touching ~/.aws.

moto runs in this process on a thread: it stops when the demo stops, however it stops.
The AWS config, the credentials and the daemon's token live in a private temporary
directory that is removed on exit: the demo writes nothing under your home directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import click

from rolebroker.cli.shellenv import KEY_VARS, PROFILE_VARS, RELATIVE_URI, WEB_IDENTITY_VARS
from rolebroker.config import DEFAULT_PORT, Settings
from rolebroker.interrupts import raising_on

DEV_ACCOUNT = "111111111111"
DEMO_REGION = "us-east-1"
PROD_ACCOUNT = "222222222222"

DEMO_CONFIG = f"""\
# Written by `rolebroker demo`; removed when the demo stops.
[profile demo-base]
region = {DEMO_REGION}

[profile dev]
role_arn = arn:aws:iam::{DEV_ACCOUNT}:role/demo-developer
source_profile = demo-base
region = {DEMO_REGION}

[profile prod]
role_arn = arn:aws:iam::{PROD_ACCOUNT}:role/demo-deployer
source_profile = dev
external_id = rolebroker-demo
region = {DEMO_REGION}
"""

# moto accepts any keys; these exist only in the demo's temporary directory.
DEMO_CREDENTIALS = """\
[demo-base]
aws_access_key_id = AKIAROLEBROKERDEMO00
aws_secret_access_key = rolebroker-demo-not-a-real-secret-key000
"""

_CLIENT_VARS = (*PROFILE_VARS, *KEY_VARS, RELATIVE_URI, *WEB_IDENTITY_VARS, "AWS_SSO_SESSION")


class _Stop(Exception):
    """Ctrl-C or SIGTERM: leave through the finally blocks, so moto and the files go too."""


def run(settings: Settings) -> None:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise click.ClickException(
            "the demo needs moto (its local STS), which is not installed here. In a rolebroker "
            "checkout: make demo (or: pipx install --force '.[demo]'). Installed with pipx: "
            "pipx inject rolebroker 'moto[server]'; in a virtualenv: pip install 'moto[server]'"
        ) from None
    from rolebroker.daemon import run_daemon
    from rolebroker.logs import configure_logging

    _require_free_port(settings.port)
    configure_logging(settings.log_level)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with _stop_on_signals(), _private_dir() as workdir:
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        try:
            # The demo's token is as throw-away as its profiles: never the real token file.
            settings = replace(settings, token_file=workdir / "token")
            sts_url = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
            config = _write(workdir / "config", DEMO_CONFIG)
            credentials = _write(workdir / "credentials", DEMO_CREDENTIALS)
            _isolate_environment(config, credentials, sts_url)
            _announce_when_ready(settings, sts_url, config)
            run_daemon(settings, state_dir=workdir)  # grants and audit log: throw-away too
        except _Stop:
            pass
        finally:
            moto.stop()
    click.echo("rolebroker demo stopped; the local STS, the temporary AWS config and token are gone.")


def _require_free_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            rb = self_command()
            raise click.ClickException(
                f"port {port} is in use (a running rolebroker? see: {rb} status --port {port}); "
                f"pick another: ROLEBROKER_PORT={port + 1} make demo (in a checkout), "
                f"or: {rb} demo --port {port + 1}"
            ) from None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """uvicorn re-raises SIGTERM/SIGINT with the handlers it found once it has shut down:
    these handlers turn them into _Stop instead of killing the process mid-cleanup."""

    with contextlib.suppress(_Stop), raising_on(_Stop, signal.SIGTERM, signal.SIGINT):
        yield


@contextlib.contextmanager
def _private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rolebroker-demo-"))  # 0700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _isolate_environment(config: Path, credentials: Path, sts_url: str) -> None:
    """The daemon in this process reads only the demo's files and calls only moto."""
    for name in _CLIENT_VARS:
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_ENDPOINT_URL_STS": sts_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )


def _announce_when_ready(settings: Settings, sts_url: str, config: Path) -> None:
    def wait_then_print() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", settings.port), timeout=0.5):
                    click.echo(banner(settings, sts_url, config))
                    return
            except OSError:
                time.sleep(0.05)

    threading.Thread(target=wait_then_print, name="demo-banner", daemon=True).start()


def self_command() -> str:
    """How another terminal runs this rolebroker: ``make demo`` runs .venv/bin/rolebroker,
    which is not on that terminal's PATH, so the printed lines name it in full."""
    if shutil.which("rolebroker"):
        return "rolebroker"
    running = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if running is not None and running.name == "rolebroker" and running.is_file():
        return shlex.quote(str(running))
    return f"{shlex.quote(sys.executable)} -m rolebroker"


def whoami_command(sts_url: str) -> str:
    """A caller-identity check that needs only what the demo itself runs on: boto3 comes
    with rolebroker, the aws CLI may not be installed."""
    code = (
        f'import boto3; print(boto3.client("sts", region_name="{DEMO_REGION}", '
        f'endpoint_url="{sts_url}").get_caller_identity()["Arn"])'
    )
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def banner(settings: Settings, sts_url: str, config: Path) -> str:
    """The lines to try, exact for this port and this demo's token file, runnable as printed
    in another terminal whose PATH and environment know nothing of the demo."""
    token_flag = f" --token-file {shlex.quote(str(settings.token_file))}"
    flags = (f" --port {settings.port}" if settings.port != DEFAULT_PORT else "") + token_flag
    url = f"http://127.0.0.1:{settings.port}"
    rb = self_command()
    whoami = whoami_command(sts_url)
    lines = [
        "",
        "rolebroker demo: the real daemon on a local STS (moto). Nothing touches your ~/.aws or AWS.",
        f"  rolebroker   {url}",
        f"  token file   {settings.token_file}",
        f"  local STS    {sts_url}",
        f"  AWS config   {config}",
        f"               dev  = role in account {DEV_ACCOUNT}",
        f"               prod = role in account {PROD_ACCOUNT}, assumed from dev (external_id)",
        "",
        "Try, in another terminal:",
        f'  curl -s -H "Authorization: $({rb} token{token_flag})" {url}/creds/prod',
        f"  {rb} status{flags}",
        "and point that shell at prod: every SDK and CLI in it now asks rolebroker",
        f'  eval "$({rb} env prod{flags})"',
        f"  {whoami}",
    ]
    if shutil.which("aws"):
        lines.append(f"  aws sts get-caller-identity --endpoint-url {sts_url} --region {DEMO_REGION}")
    lines += [
        "",
        "Ctrl-C stops the demo, the local STS, and removes the temporary AWS config and token.",
        "",
    ]
    return "\n".join(lines)
