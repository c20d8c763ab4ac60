import re

import pytest

from rolebroker.credentials import Credentials, account_from_arn, format_expiration


def test_expiration_is_utc_with_literal_z() -> None:
    assert format_expiration(0) == "1970-01-01T00:00:00Z"
    assert format_expiration(1795306750.9) == "2026-11-22T00:19:10Z"


def test_ecs_json_has_exactly_the_contract_fields_all_strings() -> None:
    body = Credentials(
        "ASIA1", "sec", "tok", 1795306750.0, "123456789012", "arn:aws:iam::123456789012:role/r"
    ).to_ecs_json()
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId", "RoleArn"}
    assert all(isinstance(v, str) for v in body.values())
    assert "Code" not in body
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["Expiration"])


def test_long_term_keys_are_never_served() -> None:
    with pytest.raises(ValueError):
        Credentials("AKIA", "sec").to_ecs_json()


def test_repr_hides_secrets() -> None:
    text = repr(Credentials("AKIAVISIBLE", "the-secret", "the-token", 1.0))
    assert "AKIAVISIBLE" in text
    assert "the-secret" not in text and "the-token" not in text


def test_account_from_arn() -> None:
    assert account_from_arn("arn:aws:sts::222222222222:assumed-role/prod/s") == "222222222222"
    assert account_from_arn("arn:aws-cn:iam::333333333333:role/x") == "333333333333"
    assert account_from_arn("nonsense") is None
    assert account_from_arn(None) is None
