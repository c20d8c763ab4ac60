from pathlib import Path

import pytest

from rolebroker.config import DEFAULT_PORT, SettingsError, default_token_file, load_settings


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_RUNTIME_DIR": str(tmp_path), **extra}


def write_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "cfg" / "rolebroker").mkdir(parents=True)
    (tmp_path / "cfg" / "rolebroker" / "config.toml").write_text(text)


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings({}, env_for(tmp_path))
    assert (settings.host, settings.port, settings.refresh_before) == ("127.0.0.1", DEFAULT_PORT, 1200.0)
    assert settings.token_file == tmp_path / "rolebroker" / "token"
    assert settings.default_profile == "default"


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    write_file(tmp_path, "port = 1111\nrefresh_before = 100\nkeep_warm = 60\n")
    env = env_for(tmp_path, ROLEBROKER_PORT="2222", ROLEBROKER_REFRESH_BEFORE="200")
    settings = load_settings({"port": 3333, "refresh_before": None}, env)
    assert settings.port == 3333
    assert settings.refresh_before == 200.0
    assert settings.keep_warm == 60.0
    assert settings.config_file == tmp_path / "cfg" / "rolebroker" / "config.toml"


def test_default_profile_follows_aws_profile(tmp_path: Path) -> None:
    assert load_settings({}, env_for(tmp_path, AWS_PROFILE="prod")).default_profile == "prod"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_non_loopback_hosts_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(SettingsError, match="not a loopback address"):
        load_settings({"host": host}, env_for(tmp_path))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_hosts_are_accepted(tmp_path: Path, host: str) -> None:
    assert load_settings({"host": host}, env_for(tmp_path)).host == host


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ROLEBROKER_PORT"):
        load_settings({}, env_for(tmp_path, ROLEBROKER_PORT="http"))
    write_file(tmp_path, "refresh_before = -5\n")
    with pytest.raises(SettingsError, match=r"config\.toml"):
        load_settings({}, env_for(tmp_path))


def test_unknown_and_broken_config_file(tmp_path: Path) -> None:
    write_file(tmp_path, "prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting"):
        load_settings({}, env_for(tmp_path))
    (tmp_path / "cfg" / "rolebroker" / "config.toml").write_text("port = = 1")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings({}, env_for(tmp_path))


def test_token_file_falls_back_without_runtime_dir(tmp_path: Path) -> None:
    path = default_token_file({"XDG_STATE_HOME": str(tmp_path / "state")})
    assert path == tmp_path / "state" / "rolebroker" / "token"


def test_same_user_without_token_from_file_and_env(tmp_path: Path) -> None:
    assert load_settings({}, env_for(tmp_path)).same_user_without_token is False
    write_file(tmp_path, "same_user_without_token = true\n")
    assert load_settings({}, env_for(tmp_path)).same_user_without_token is True
    off = env_for(tmp_path, ROLEBROKER_SAME_USER_WITHOUT_TOKEN="false")
    assert load_settings({}, off).same_user_without_token is False
    with pytest.raises(SettingsError, match="ROLEBROKER_SAME_USER_WITHOUT_TOKEN"):
        load_settings({}, env_for(tmp_path, ROLEBROKER_SAME_USER_WITHOUT_TOKEN="maybe"))


def test_container_settings_default_env_and_file(tmp_path: Path) -> None:
    defaults = load_settings(environ=env_for(tmp_path))
    assert (defaults.containers, defaults.container_port) == ("auto", 9912)
    from_env = load_settings(
        environ=env_for(tmp_path, ROLEBROKER_CONTAINERS="ON", ROLEBROKER_CONTAINER_PORT="10999")
    )
    assert (from_env.containers, from_env.container_port) == ("on", 10999)
    write_file(tmp_path, "containers = false\ncontainer_port = 11000\n")
    from_file = load_settings(environ=env_for(tmp_path))
    assert (from_file.containers, from_file.container_port) == ("off", 11000)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROLEBROKER_CONTAINER_PORT", "80"),
        ("ROLEBROKER_CONTAINER_PORT", "x"),
        ("ROLEBROKER_CONTAINERS", "maybe"),
    ],
)
def test_bad_container_settings_name_their_source(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(environ=env_for(tmp_path, **{name: value}))


def test_container_settings_need_a_restart() -> None:
    from rolebroker.config import RESTART_SETTINGS

    assert {"containers", "container_port"} <= set(RESTART_SETTINGS)
