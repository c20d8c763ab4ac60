"""In process: the doctor's environment checks over an injected environ and AWS files, no
bash and no daemon (nothing listens on its port). test_doctor.py keeps the end-to-end runs
in a real shell set up by ``rolebroker env``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolebroker.cli.doctor import Finding, Level, diagnose
from rolebroker.config import Settings
from tests.support.procs import free_port

FULL = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
DEFAULT_KEYS = (
    "[default]\naws_access_key_id = AKIADEFAULTSHADOW000\naws_secret_access_key = shadowSecret000\n"
)


def problems(findings: list[Finding]) -> dict[str, str]:
    return {f.what: f.fix for f in findings if f.level is Level.PROBLEM}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(port=free_port(), token_file=tmp_path / "token")


@pytest.fixture
def environ(tmp_path: Path, settings: Settings) -> dict[str, str]:
    """What ``rolebroker env prod`` sets up, as the shell would see it."""
    (tmp_path / "config").write_text("[profile prod]\nregion = us-east-1\n")
    (tmp_path / "credentials").write_text("")
    return {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        FULL: f"http://127.0.0.1:{settings.port}/creds/prod",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(settings.token_file),
    }


SHADOWING = {
    "access keys": (
        {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE0000000", "AWS_SECRET_ACCESS_KEY": "notreal"},
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY are set",
        "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY   # or: ",
    ),
    "AWS_PROFILE": ({"AWS_PROFILE": "dev"}, "AWS_PROFILE=dev is set", "unset AWS_PROFILE"),
    "RELATIVE_URI": (
        {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"},
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is set",
        "unset AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ),
    "web identity": (
        {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/x"},
        "AWS_WEB_IDENTITY_TOKEN_FILE is set",
        "unset AWS_WEB_IDENTITY_TOKEN_FILE AWS_ROLE_ARN",
    ),
    "no FULL_URI": ({FULL: ""}, f"{FULL} is not set", 'eval "$(rolebroker env'),
}


@pytest.mark.parametrize("case", sorted(SHADOWING))
def test_each_bypass_is_named_with_its_fix(
    case: str, settings: Settings, environ: dict[str, str], tmp_path: Path
) -> None:
    change, what, fix = SHADOWING[case]
    found = problems(diagnose(settings, {**environ, **change}, "prod"))
    assert what in found, found
    assert found[what].startswith(fix), found[what]
    clean = problems(diagnose(settings, environ, "prod"))
    assert what not in clean  # the problem comes from the change, not from the set-up
    assert "notreal" not in repr(found) and "shadowSecret000" not in repr(found)


@pytest.mark.parametrize("where", ["credentials", "config"])
def test_default_keys_in_the_client_files_are_named_never_shown(
    where: str, settings: Settings, environ: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / where
    path.write_text(path.read_text() + "\n" + DEFAULT_KEYS)
    found = problems(diagnose(settings, environ, "prod"))
    expected = f"[default] in {path} has aws_access_key_id, aws_secret_access_key"
    assert expected in found, found
    assert "shadowSecret000" not in repr(found)


def test_an_unreachable_daemon_is_a_problem_with_a_fix(settings: Settings, environ: dict[str, str]) -> None:
    findings = diagnose(settings, environ, "prod")
    first = findings[0]
    assert first.level is Level.PROBLEM and str(settings.port) in first.what + first.why + first.fix, first
