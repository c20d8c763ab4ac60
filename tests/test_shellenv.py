"""``rolebroker env``: the lines are evaluated by real shells and then used by a real boto3
process, from a parent environment full of things that would win over the endpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rolebroker.cli import shellenv
from rolebroker.cli.shellenv import AwsConfigView, plan, read_aws_config
from tests.support.ci import skip_or_fail
from tests.support.cli import cli_env, rolebroker_on_path, run_cli
from tests.support.clients import CLIENTS_DIR, require_node_package
from tests.support.daemon import CHAIN_CREDENTIALS, Daemon
from tests.support.moto import MotoServer
from tests.support.stsproxy import StsProxy

AWKWARD = ["plain", "it's", 'say "hi"', "$HOME `id` $(id)", "back\\slash", "new\nline", "!bang *glob ~", ""]

HOSTILE = {
    "AWS_PROFILE": "nonexistent",
    "AWS_DEFAULT_PROFILE": "nonexistent",
    "AWS_ACCESS_KEY_ID": "AKIAHOSTILEPARENT000",
    "AWS_SECRET_ACCESS_KEY": "hostileParentSecret000000000000000000000",
    "AWS_SESSION_TOKEN": "hostile-session-token",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/hostile",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/nonexistent/token",
}

IDENTITY = "import boto3, json; print(json.dumps(boto3.client('sts').get_caller_identity()))"


def view(tmp_path: Path, **fields: object) -> AwsConfigView:
    return AwsConfigView(config_path=tmp_path / "config", credentials_path=tmp_path / "credentials", **fields)  # type: ignore[arg-type]


# -- quoting, through the real shells -------------------------------------------------------


@pytest.mark.parametrize("value", AWKWARD)
def test_posix_quoting_round_trips_through_bash(value: str) -> None:
    script = shellenv.ShellEnv(exports={"RB_VALUE": value}).render("bash")
    result = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf %s "$RB_VALUE"', "_", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    assert result.stdout == value


def _require_shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed: its output is checked only where it exists")
    return path


def test_zsh_evaluates_the_same_values() -> None:
    zsh = _require_shell("zsh")
    for value in AWKWARD:
        script = shellenv.ShellEnv(exports={"RB_VALUE": value}, unsets=("RB_GONE",)).render("zsh")
        result = subprocess.run(
            [zsh, "-f", "-c", 'eval "$1"; printf %s "$RB_VALUE"; printf %s "${RB_GONE-unset}"', "_", script],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": "/usr/bin:/bin", "RB_GONE": "x"},
        )
        assert result.stdout == value + "unset", repr(value)


def test_fish_evaluates_the_same_values(tmp_path: Path) -> None:
    fish = _require_shell("fish")
    for value in AWKWARD:
        script = shellenv.ShellEnv(exports={"RB_VALUE": value}, unsets=("RB_GONE", "RB_NEVER")).render("fish")
        (tmp_path / "env.fish").write_text(script)
        result = subprocess.run(
            [
                fish,
                "--no-config",
                "-c",
                'source $argv[1]; printf %s "$RB_VALUE"; set -q RB_GONE; or printf unset',
                str(tmp_path / "env.fish"),
            ],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "RB_GONE": "x", "HOME": str(tmp_path)},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == value + "unset", repr(value)


# -- what is set and unset ----------------------------------------------------------------------


def test_plan_points_at_the_endpoint_and_unsets_everything_that_wins_over_it(tmp_path: Path) -> None:
    planned = plan(
        url="http://127.0.0.1:9911/creds/prod",
        token="tok",
        profile="prod",
        environ={},
        aws_config=view(tmp_path),
    )
    assert planned.exports[shellenv.FULL_URI] == "http://127.0.0.1:9911/creds/prod"
    assert planned.exports[shellenv.TOKEN] == "tok"
    assert shellenv.TOKEN_FILE not in planned.exports
    for name in (*HOSTILE, "AWS_SECURITY_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        assert name in planned.unsets
    assert not planned.notes
    assert shellenv.CREDENTIALS_FILE not in planned.exports


def test_export_token_file_exports_the_file_instead_of_the_token(tmp_path: Path) -> None:
    """Both set make the JS SDK v3 print two warnings per credential load, and SDKs disagree
    on which one wins: the file variant replaces (and unsets) the token variable."""
    planned = plan(
        url="http://127.0.0.1:9911/creds/prod",
        token="daemon-token-value",
        profile="prod",
        environ={shellenv.TOKEN: "stale"},
        aws_config=view(tmp_path),
        token_file=tmp_path / "token",
    )
    assert planned.exports[shellenv.TOKEN_FILE] == str(tmp_path / "token")
    assert shellenv.TOKEN_FILE not in planned.unsets
    assert shellenv.TOKEN not in planned.exports
    assert shellenv.TOKEN in planned.unsets
    assert "daemon-token-value" not in planned.render("bash") + planned.render("fish")
    assert shellenv.TOKEN not in planned.apply({shellenv.TOKEN: "stale"})


def test_default_keys_in_the_credentials_file_are_read_through_botocore_and_hidden(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("[default]\nregion = eu-west-1\n[profile prod]\nregion = eu-central-1\n")
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = defaultSecretValue\n"
    )
    environ = {
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
    }
    seen = read_aws_config(environ, "prod")
    assert seen.default_in_credentials == ("aws_access_key_id", "aws_secret_access_key")
    assert seen.default_in_config == ()
    assert seen.region == "eu-central-1"
    planned = plan(url="u", token="t", profile="prod", environ=environ, aws_config=seen)
    assert planned.exports[shellenv.CREDENTIALS_FILE] == "/dev/null"
    assert planned.exports["AWS_REGION"] == "eu-central-1"
    assert len(planned.notes) == 1
    assert "defaultSecretValue" not in planned.notes[0]
    assert "AKIADEFAULT" not in planned.notes[0]


def test_default_credentials_in_the_config_file_are_reported(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("[default]\ncredential_process = /bin/false\n")
    environ = {"AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    seen = read_aws_config(environ, "prod")
    assert seen.default_in_config == ("credential_process",)
    planned = plan(url="u", token="t", profile="prod", environ=environ, aws_config=seen)
    assert shellenv.CREDENTIALS_FILE not in planned.exports
    assert "[default]" in planned.notes[0] and "source_profile" in planned.notes[0]


def test_a_broken_config_file_is_a_note_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("[profile broken\nregion\n")
    seen = read_aws_config({"AWS_CONFIG_FILE": str(tmp_path / "config")}, "prod")
    assert seen.errors and "cannot parse" in seen.errors[0]


@pytest.mark.parametrize(
    ("environ", "region", "exports", "unsets"),
    [
        ({}, "eu-west-1", {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}, []),
        ({"AWS_REGION": "us-west-2"}, "eu-west-1", {}, []),  # the user's own region wins
        (
            {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "us-west-2", "ROLEBROKER_REGION": "us-west-2"},
            "eu-west-1",
            {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"},
            [],
        ),  # a region a previous `env` set is replaced
        (
            {"AWS_REGION": "us-west-2", "ROLEBROKER_REGION": "us-west-2"},
            None,
            {},
            ["AWS_REGION", "AWS_DEFAULT_REGION", "ROLEBROKER_REGION"],
        ),
        ({}, None, {}, []),
    ],
)
def test_region_follows_the_profile_unless_the_user_set_one(
    tmp_path: Path, environ: dict[str, str], region: str | None, exports: dict[str, str], unsets: list[str]
) -> None:
    planned = plan(url="u", token="t", profile="p", environ=environ, aws_config=view(tmp_path, region=region))
    for name, value in exports.items():
        assert planned.exports[name] == value
    if not exports:
        assert "AWS_REGION" not in planned.exports
    for name in unsets:
        assert name in planned.unsets
    if environ.get("AWS_REGION") and not environ.get("ROLEBROKER_REGION") and region:
        assert any("keeping AWS_REGION=us-west-2" in note for note in planned.notes)


def test_detect_shell() -> None:
    assert shellenv.detect_shell({"SHELL": "/usr/bin/fish"}) == "fish"
    assert shellenv.detect_shell({"SHELL": "/bin/zsh"}) == "zsh"
    assert shellenv.detect_shell({"SHELL": "/bin/tcsh"}) == "bash"
    assert shellenv.detect_shell({}) == "bash"


# -- end to end: eval in bash, then a real boto3 process ---------------------------------------


SHELL_LINES = {
    "bash": ["bash", "-c", 'set -e; eval "$(rolebroker env {args})"; exec "$PYTHON" -c "$IDENTITY"'],
    "zsh": [
        "zsh",
        "-f",
        "-c",
        'set -e; eval "$(rolebroker env {args} --shell zsh)"; exec "$PYTHON" -c "$IDENTITY"',
    ],
    "fish": [
        "fish",
        "--no-config",
        "-c",
        "rolebroker env {args} --shell fish | source; and exec $PYTHON -c $IDENTITY",
    ],
}


def shell_then_identity(
    daemon: Daemon, moto: MotoServer, tmp_path: Path, env_args: str, shell: str = "bash", **parent: str
) -> dict[str, str]:
    """``env`` evaluated by a real shell, then a boto3 process started from that shell."""
    env = rolebroker_on_path(tmp_path / "bin", cli_env(daemon, **parent))
    env.update(PYTHON=sys.executable, IDENTITY=IDENTITY, AWS_ENDPOINT_URL_STS=moto.url)  # identity: moto
    argv = [part.replace("{args}", env_args) for part in SHELL_LINES[shell]]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    assert not daemon.leaked(result.stderr), "a secret reached stderr"
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_eval_env_gives_boto3_the_role_despite_a_hostile_parent(
    daemon: Daemon, moto: MotoServer, tmp_path: Path, shell: str
) -> None:
    _require_shell(shell)
    identity = shell_then_identity(daemon, moto, tmp_path, "prod", shell, **HOSTILE)
    assert identity["Account"] == "222222222222"
    assert identity["Arn"].startswith("arn:aws:sts::222222222222:assumed-role/prod/")


def test_default_profile_keys_do_not_shadow_the_endpoint(
    daemon: Daemon, moto: MotoServer, tmp_path: Path
) -> None:
    # Keys in [default] would win over FULL_URI in boto3 (moto would call them account 123456789012).
    daemon.home.credentials_path.write_text(
        CHAIN_CREDENTIALS + "\n[default]\naws_access_key_id = AKIADEFAULTSHADOW000\n"
        "aws_secret_access_key = shadowSecret0000000000000000000000000000\n"
    )
    identity = shell_then_identity(daemon, moto, tmp_path, "prod-admin")
    assert identity["Arn"] == "arn:aws:sts::333333333333:assumed-role/admin/alice-admin"


DEFAULT_KEYS = (
    "\n[default]\naws_access_key_id = AKIADEFAULTSHADOW000\n"
    "aws_secret_access_key = shadowSecret0000000000000000000000000000\n"
)


@pytest.mark.parametrize("with_config_file", [True, False], ids=["config-file", "no-config-file"])
def test_default_profile_keys_do_not_shadow_the_endpoint_for_js_v2(
    daemon: Daemon, moto: MotoServer, tmp_path: Path, with_config_file: bool
) -> None:
    """aws-sdk-js v2 (Serverless v3's SDK) reads ~/.aws/credentials whatever
    AWS_SHARED_CREDENTIALS_FILE says unless AWS_SDK_LOAD_CONFIG is set, and with it set it
    fails on a missing config file: both cases must reach the endpoint."""
    node = require_node_package("aws-sdk")
    daemon.home.credentials_path.write_text(CHAIN_CREDENTIALS + DEFAULT_KEYS)
    # The client shell's own AWS config: the daemon keeps reading its own file.
    client_config = tmp_path / "client-config"
    if with_config_file:
        client_config.write_text("[default]\nregion = us-east-1\n")
    parent = cli_env(daemon, AWS_CONFIG_FILE=str(client_config), AWS_REGION="us-east-1")
    env = rolebroker_on_path(tmp_path / "bin", parent)
    env.update(NODE=node, SCRIPT=str(CLIENTS_DIR / "sts-identity-v2.js"), STS=moto.url)
    script = 'set -e; eval "$(rolebroker env prod-admin)"; exec "$NODE" "$SCRIPT" "$STS"'
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=90, cwd=CLIENTS_DIR
    )
    assert not daemon.leaked(result.stderr), "a secret reached stderr"
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["Arn"] == "arn:aws:sts::333333333333:assumed-role/admin/alice-admin"


def test_env_with_token_file_exports_only_the_file(daemon: Daemon, tmp_path: Path) -> None:
    env = rolebroker_on_path(tmp_path / "bin", cli_env(daemon))
    script = (
        "export AWS_CONTAINER_AUTHORIZATION_TOKEN=from-an-earlier-env; "
        'eval "$(rolebroker env dev --export-token-file)"; '
        'echo "token=${AWS_CONTAINER_AUTHORIZATION_TOKEN-unset}"; '
        'echo "file=$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"'
    )
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    token_line, file_line = result.stdout.split()
    assert token_line == "token=unset", result.stderr[-2000:]
    # The file holds a grant for dev alone (never the master token), private to the user.
    path = Path(file_line.removeprefix("file="))
    assert path.parent == daemon.home.root / "run" / "rolebroker" / "grants"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    grant = path.read_text()
    daemon.served_secrets.add(grant)
    assert grant.startswith("rbg1.") and grant != daemon.token
    assert daemon.get("/creds/dev", token=grant).status_code == 200
    assert daemon.get("/creds/prod", token=grant).json()["code"] == "GrantScope"


def test_env_refuses_an_unknown_profile_and_prints_nothing(daemon: Daemon) -> None:
    result = run_cli("env", "no-such-profile", env=cli_env(daemon))
    assert result.returncode != 0
    assert result.stdout == ""
    assert "ProfileNotFound" in result.stderr and "no-such-profile" in result.stderr


def test_env_warns_but_still_prints_when_sts_is_down(daemon: Daemon, sts: StsProxy) -> None:
    sts.stop()  # a retry will help (5xx): the environment is right, so print it
    result = run_cli("env", "dev", env=cli_env(daemon))
    assert result.returncode == 0, result.stderr
    assert "export AWS_CONTAINER_CREDENTIALS_FULL_URI=" in result.stdout
    assert "warning: profile 'dev' is not available right now (StsUnavailable" in result.stderr
    assert not daemon.leaked(result.stderr)
