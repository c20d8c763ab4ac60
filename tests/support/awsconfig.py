"""The one AWS-config writer for in-process tests: files in tmp_path, env pointing at them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rolebroker.profiles import ProfileCatalog
from tests.support.daemon import CHAIN_CONFIG, CHAIN_CREDENTIALS


@dataclass(frozen=True)
class AwsFiles:
    """``~/.aws/config`` and ``credentials`` of one test; ``write`` replaces both and
    returns the catalog botocore reads from them now."""

    config: Path
    credentials: Path

    def write(self, text: str = CHAIN_CONFIG, creds: str = CHAIN_CREDENTIALS) -> ProfileCatalog:
        self.config.write_text(text)
        self.credentials.write_text(creds)
        return ProfileCatalog.load()


def aws_files(directory: Path, monkeypatch: pytest.MonkeyPatch) -> AwsFiles:
    """Point AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE at files under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = AwsFiles(directory / "config", directory / "credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(files.config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files.credentials))
    return files
