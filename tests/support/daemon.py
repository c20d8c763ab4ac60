"""The real rolebroker daemon as a subprocess, plus a client that remembers every secret
it was served so tests can prove none of them leaked into the daemon's output."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rolebroker.grantcode import grant_string
from tests.support.procs import ManagedProcess, free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]

BASE_KEY_ID = "AKIAROLEBROKERTEST01"
BASE_SECRET = "rolebrokerTestBaseSecretKey0000000000000"

# A three-hop chain across three accounts, with an external id in the middle.
CHAIN_CONFIG = """\
[default]
region = us-east-1

[profile base]
region = us-east-1

[profile dev]
role_arn = arn:aws:iam::111111111111:role/dev
source_profile = base
region = us-east-1

[profile prod]
role_arn = arn:aws:iam::222222222222:role/prod
source_profile = dev
external_id = prod-external-id
region = us-east-1

[profile prod-admin]
role_arn = arn:aws:iam::333333333333:role/admin
source_profile = prod
role_session_name = alice-admin
region = us-east-1
"""

CHAIN_CREDENTIALS = f"""\
[base]
aws_access_key_id = {BASE_KEY_ID}
aws_secret_access_key = {BASE_SECRET}
"""


@dataclass
class AwsHome:
    """An isolated HOME with its own ~/.aws and XDG dirs: no test sees the developer's files."""

    root: Path

    def __post_init__(self) -> None:
        for sub in (".aws", "config", "run", "state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "run").chmod(0o700)

    @property
    def config_path(self) -> Path:
        return self.root / ".aws" / "config"

    @property
    def credentials_path(self) -> Path:
        return self.root / ".aws" / "credentials"

    @property
    def token_file(self) -> Path:
        return self.root / "run" / "rolebroker" / "token"

    def write(self, config: str = CHAIN_CONFIG, credentials: str = CHAIN_CREDENTIALS) -> None:
        self.config_path.write_text(config)
        self.credentials_path.write_text(credentials)

    def env(self, sts_url: str | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "XDG_STATE_HOME": str(self.root / "state"),
            "AWS_CONFIG_FILE": str(self.config_path),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_path),
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": str(REPO / "src"),
            "PYTHONUNBUFFERED": "1",
        }
        if sts_url:
            env["AWS_ENDPOINT_URL_STS"] = sts_url
        return env


@dataclass
class Daemon:
    home: AwsHome
    args: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    sts_url: str | None = None
    port: int = field(default_factory=free_port)
    served_secrets: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        env = {**self.home.env(self.sts_url), **self.extra_env}
        argv = [sys.executable, "-m", "rolebroker", "serve", "--port", str(self.port), *self.args]
        self.process = ManagedProcess(argv, env, cwd=self.home.root)
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            if not self.process.running():
                raise RuntimeError(
                    f"daemon exited with {self.process.proc.returncode}:\n{self.safe_output()}"
                )
            return httpx.get(f"{self.base_url}/healthz", timeout=0.5).status_code == 200

        try:
            wait_until(healthy, timeout, "the daemon's /healthz", step=0.02, ignoring=(httpx.HTTPError,))
        except TimeoutError:
            raise TimeoutError(f"daemon not ready:\n{self.safe_output()}") from None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def creds_url(self, profile: str) -> str:
        return f"{self.base_url}/creds/{profile}"

    @property
    def token(self) -> str:
        return self.home.token_file.read_text()

    def get(
        self,
        path: str,
        *,
        token: str | None = "",
        headers: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> httpx.Response:
        """GET with the daemon's token (``token=None`` sends none)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = token or self.token
        response = httpx.get(self.base_url + path, headers=sent, timeout=timeout)
        self.remember(response)
        return response

    def remember(self, response: httpx.Response) -> None:
        if response.status_code == 200 and path_is_creds(response.request.url.path):
            body = response.json()
            self.served_secrets.update({body["SecretAccessKey"], body["Token"]})
        if response.status_code == 201 and response.request.url.path == "/grants":
            self.served_secrets.add(response.json()["grant"])

    def post(self, path: str, body: Mapping[str, object], *, token: str = "") -> httpx.Response:
        """POST a JSON body with the daemon's token (or ``token``)."""
        sent = {"Authorization": token or self.token}
        response = httpx.post(self.base_url + path, json=body, headers=sent, timeout=15.0)
        self.remember(response)
        return response

    @property
    def state_dir(self) -> Path:
        return self.home.root / "state" / "rolebroker"

    def grant_strings(self) -> set[str]:
        """Every grant in the daemon's grants file, as its string (recomputed from the token
        like the daemon does): each counts as a secret, whoever created it (CLI or test)."""
        try:
            data = json.loads((self.state_dir / "grants.json").read_text())
            token = self.home.token_file.read_text()
        except (OSError, ValueError):
            return set()
        return {grant_string(token, g["id"]) for g in data.get("grants", []) if isinstance(g, dict)}

    def files_text(self) -> str:
        """The daemon's own files a secret must never reach: audit log and grants file."""
        texts = []
        for path in [*sorted(self.state_dir.glob("audit.jsonl*")), self.state_dir / "grants.json"]:
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def client_env(self, profile: str, region: str = "us-east-1") -> dict[str, str]:
        """The only variables a client process gets: endpoint, token, region."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home.root / "client-home"),
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.creds_url(profile),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def output(self) -> str:
        return self.process.output()

    def safe_output(self) -> str:
        """The daemon's output with every secret masked, for failure messages."""
        text = self.output()
        for secret in self.secrets():
            text = text.replace(secret, "<SECRET>")
        return text

    def secrets(self) -> set[str]:
        found = set(self.served_secrets) | {BASE_SECRET} | self.grant_strings()
        if self.home.token_file.exists():
            found.add(self.home.token_file.read_text())
        return {s for s in found if s}

    def leaked(self, text: str | None = None) -> list[str]:
        """Which known secrets appear in ``text`` (default: the daemon's output, its audit
        log and grants file); masked."""
        haystack = self.output() + self.files_text() if text is None else text
        return [f"{s[:4]}...({len(s)} chars)" for s in self.secrets() if s in haystack]

    def stop(self) -> None:
        self.process.stop()


def path_is_creds(path: str) -> bool:
    return path == "/creds" or path.startswith("/creds/")
