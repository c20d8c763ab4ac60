import os
import stat
from pathlib import Path

import pytest

from rolebroker.authtoken import TokenFileError, load_or_create_token, token_matches


def test_created_0600_without_newline_in_a_0700_dir(tmp_path: Path) -> None:
    path = tmp_path / "run" / "rolebroker" / "token"
    token = load_or_create_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes() == token.encode()
    assert len(token) >= 43  # 32 random bytes, url-safe base64
    assert token.isascii() and not any(c.isspace() for c in token)


def test_reused_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "token"
    assert load_or_create_token(path) == load_or_create_token(path)


def test_tokens_differ_between_files(tmp_path: Path) -> None:
    assert load_or_create_token(tmp_path / "a") != load_or_create_token(tmp_path / "b")


def test_loose_mode_and_trailing_newline_are_repaired(tmp_path: Path) -> None:
    path = tmp_path / "token"
    token = load_or_create_token(path)
    path.write_text(token + "\n")
    os.chmod(path, 0o644)
    assert load_or_create_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == token.encode()


def test_garbage_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("short")
    with pytest.raises(TokenFileError, match="remove it"):
        load_or_create_token(path)


def test_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("x" * 50)
    (tmp_path / "token").symlink_to(target)
    with pytest.raises(TokenFileError):
        load_or_create_token(tmp_path / "token")


def test_token_matches() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("abc", "Bearer abc")
    assert not token_matches("abc", None)
    assert not token_matches("abc", "ab\u00ff")
