"""Where the AWS config and shared credentials files are, as every SDK finds them.

Shared by the daemon (profiles.py) and the CLI (cli/shellenv.py), which must not import
profiles.py and its botocore session just for two paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def aws_config_paths(environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """``(config, credentials)`` from AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE, or the defaults."""
    env = os.environ if environ is None else environ
    config = Path(os.path.expanduser(env.get("AWS_CONFIG_FILE", "~/.aws/config")))
    credentials = Path(os.path.expanduser(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")))
    return config, credentials
