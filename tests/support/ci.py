"""One rule for tests that need a tool the machine may lack: skip visibly on a developer
machine, fail on CI (``CI`` set to anything but empty, 0, false or no), which must run them.
``make test`` installs every such tool (tests/clients/install.sh)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def ci_enforced() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason`` on a developer machine; fail with it when CI is set."""
    if ci_enforced():
        pytest.fail(f"{reason} (CI is set, so this test must run: see tests/clients/install.sh)")
    pytest.skip(f"{reason} (tests/clients/install.sh installs it)")
