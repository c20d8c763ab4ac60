"""``rolebroker doctor`` in a real bash that ran ``eval "$(rolebroker env prod)"``, then one
thing that makes SDKs bypass or fail on the endpoint: each case must exit 1, name the
problem and print the exact fix, and never print a secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli_env, rolebroker_on_path, run_cli
from tests.support.daemon import Daemon
from tests.support.stsproxy import StsProxy

FULL = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TOKEN_FILE = '"$XDG_RUNTIME_DIR/rolebroker/token"'
DEFAULT_KEYS = (
    "[default]\naws_access_key_id = AKIADEFAULTSHADOW000\naws_secret_access_key = shadowSecret000\n"
)


def swap_host(host: str) -> str:
    return f'export {FULL}="${{{FULL}/127.0.0.1/{host}}}"'


def doctor_after(
    daemon: Daemon, tmp_path: Path, change: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """bash: set up for prod as the README says, apply ``change``, run the doctor."""
    env = rolebroker_on_path(tmp_path / "bin", cli_env(daemon))
    env["WORK"] = str(tmp_path)
    setup = "rolebroker env prod" + ("" if check else " --no-check")
    script = f'set -e; eval "$({setup})"\n{change}\nexec rolebroker doctor prod'
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=90)
    assert not daemon.leaked(result.stdout + result.stderr), "the doctor printed a secret"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result


def test_doctor_passes_on_the_environment_env_sets_up(daemon: Daemon, tmp_path: Path) -> None:
    result = doctor_after(daemon, tmp_path, ":")
    assert result.returncode == 0, result.stdout
    assert "No problems found" in result.stdout
    assert "rolebroker serves 'prod': account 222222222222" in result.stdout
    assert "PROBLEM" not in result.stdout


SHADOWING = {
    "access keys": (
        "export AWS_ACCESS_KEY_ID=AKIAEXAMPLE0000000 AWS_SECRET_ACCESS_KEY=notreal",
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY are set",
        "fix: unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY   # or: ",
    ),
    "AWS_PROFILE": ("export AWS_PROFILE=dev", "AWS_PROFILE=dev is set", "fix: unset AWS_PROFILE"),
    "RELATIVE_URI": (
        "export AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/x",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is set",
        "fix: unset AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ),
    "web identity": (
        "export AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/token AWS_ROLE_ARN=arn:aws:iam::1:role/x",
        "AWS_WEB_IDENTITY_TOKEN_FILE is set",
        "fix: unset AWS_WEB_IDENTITY_TOKEN_FILE AWS_ROLE_ARN",
    ),
    "[default] keys in credentials": (
        f"printf '\\n{DEFAULT_KEYS}' >> \"$AWS_SHARED_CREDENTIALS_FILE\"",
        "has aws_access_key_id, aws_secret_access_key",
        "fix: export AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_SDK_LOAD_CONFIG=1   # in client shells",
    ),
    "[default] keys in config": (
        f'printf \'{DEFAULT_KEYS}\' > "$WORK/client-config"; export AWS_CONFIG_FILE="$WORK/client-config"',
        "client-config has aws_access_key_id, aws_secret_access_key",
        "fix: move them to a named profile (e.g. [profile base])",
    ),
    "FULL_URI [::1]": (
        swap_host("[::1]"),
        "uses host [::1]",
        'fix: eval "$(rolebroker env prod',
    ),
    "FULL_URI 127.0.0.2": (
        swap_host("127.0.0.2"),
        "uses host 127.0.0.2",
        'fix: eval "$(rolebroker env prod',
    ),
    "FULL_URI other port": (
        "export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:1/creds/prod",
        "points at port 1, but rolebroker listens on",
        'fix: eval "$(rolebroker env prod',
    ),
    "FULL_URI missing": (
        "unset AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI is not set",
        'fix: eval "$(rolebroker env prod',
    ),
    "token file with a newline": (
        'printf "%s\\n" "$AWS_CONTAINER_AUTHORIZATION_TOKEN" > "$WORK/t"; '
        'export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="$WORK/t"',
        "ends with a newline",
        "fix: printf '%s' \"$(cat ",
    ),
    "token env and file differ": (
        'printf "%s" other-token-00000000000000000000000000000000 > "$WORK/t"; '
        'export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="$WORK/t"',
        "hold different tokens",
        'fix: eval "$(rolebroker env prod',
    ),
    "wrong token": (
        "export AWS_CONTAINER_AUTHORIZATION_TOKEN=wrong-token-000000000000000000000000000000",
        "the token in AWS_CONTAINER_AUTHORIZATION_TOKEN is not the daemon's",
        'fix: eval "$(rolebroker env prod',
    ),
    "no token": (
        "unset AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "neither AWS_CONTAINER_AUTHORIZATION_TOKEN nor AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE is set",
        'fix: eval "$(rolebroker env prod',
    ),
    "daemon token file with a newline": (
        f'printf "%s\\n" "$(cat {TOKEN_FILE})" > "$WORK/t"; cat "$WORK/t" > {TOKEN_FILE}',
        "rolebroker/token ends with a newline",
        "# rewrites it without the newline",
    ),
}


@pytest.mark.parametrize("case", list(SHADOWING))
def test_doctor_catches(case: str, daemon: Daemon, tmp_path: Path) -> None:
    change, problem, fix = SHADOWING[case]
    result = doctor_after(daemon, tmp_path, change)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    flagged = [i for i, line in enumerate(lines) if "PROBLEM" in line and problem in line]
    assert flagged, result.stdout
    after = "\n".join(lines[flagged[0] : flagged[0] + 3])
    assert "why: " in after, result.stdout
    assert fix in after, result.stdout


def test_doctor_shows_the_daemons_error_for_a_profile_it_cannot_serve(
    daemon: Daemon, sts: StsProxy, tmp_path: Path
) -> None:
    sts.set(mode="deny")
    result = doctor_after(daemon, tmp_path, ":", check=False)
    assert result.returncode == 1
    assert "rolebroker cannot serve 'prod': AccessDenied (HTTP 403)" in result.stdout
    assert "why: STS denied AssumeRole" in result.stdout


def test_doctor_flags_localhost_as_a_note_only(daemon: Daemon, tmp_path: Path) -> None:
    result = doctor_after(daemon, tmp_path, swap_host("localhost"))
    assert result.returncode == 0, result.stdout
    assert "note" in result.stdout and "uses localhost" in result.stdout


def test_the_printed_fix_for_a_token_file_newline_works(daemon: Daemon, tmp_path: Path) -> None:
    change = SHADOWING["token file with a newline"][0]
    first = doctor_after(daemon, tmp_path, change)
    fix = next(line.split("fix: ", 1)[1] for line in first.stdout.splitlines() if "# rewrites it" in line)
    second = doctor_after(daemon, tmp_path, f"{change}\n{fix}")
    assert second.returncode == 0, second.stdout


LOOP = "\n[profile loopy]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = loopy2\n" + (
    "[profile loopy2]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = loopy\n"
)


def fixes(stdout: str) -> list[str]:
    return [line.split("fix: ", 1)[1] for line in stdout.splitlines() if "fix: " in line]


def test_doctor_for_a_typo_first_suggests_the_closest_profiles(daemon: Daemon) -> None:
    """In a fresh shell (no FULL_URI), `doctor prdo` must not lead with `rolebroker env prdo`."""
    result = run_cli("doctor", "prdo", env=cli_env(daemon))
    assert result.returncode == 1
    assert "rolebroker cannot serve 'prdo': ProfileNotFound" in result.stdout
    found = fixes(result.stdout)
    assert found[0].startswith("did you mean prod"), result.stdout
    assert "rolebroker env prdo" not in result.stdout
    assert f'eval "$(rolebroker env prod --port {daemon.port})"' in result.stdout


def test_doctor_for_a_looping_profile_first_says_to_fix_the_config(daemon: Daemon) -> None:
    with daemon.home.config_path.open("a") as handle:
        handle.write(LOOP)
    result = run_cli("doctor", "loopy", env=cli_env(daemon))
    assert result.returncode == 1
    assert "rolebroker cannot serve 'loopy'" in result.stdout
    found = fixes(result.stdout)
    assert found[0].startswith("fix profile 'loopy' in the AWS config"), result.stdout
    assert not any(fix.startswith('eval "$(rolebroker env loopy') for fix in found), result.stdout
    assert not daemon.leaked(result.stdout + result.stderr)


def test_doctor_does_not_claim_every_go_sdk_reads_the_token_file(daemon: Daemon, tmp_path: Path) -> None:
    change = SHADOWING["token env and file differ"][0]
    result = doctor_after(daemon, tmp_path, change)
    assert "v1 1.44 and v2 1.17 of Debian bookworm" in result.stdout
    assert "JS SDK v3, Go and Rust send the file's" not in result.stdout
