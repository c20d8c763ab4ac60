"""STS clients and the translation of what STS says: shared botocore data, redacted and
bounded upstream text, unreadable answers with their own code."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import botocore.parsers
import pytest

from rolebroker.errors import (
    AccessDenied,
    SourceCredentialsRejected,
    StsBadResponse,
    StsInvalidRequest,
    StsRefused,
    StsTimeout,
    StsUnavailable,
)
from rolebroker.hops.sts import StsClients, issued_credentials, translate_sts_error
from rolebroker.redact import MAX_UPSTREAM_TEXT, redact

KEY_ID = "ASIAQWERTYUIOPASDFGH"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FQoGZXIvYXdzEBYaDHNlc3Npb25Ub2tlbiIMxyz+/abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG=="
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"


def client_error(code: str, message: str, status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "AssumeRole",
    )


def test_every_profile_session_shares_one_data_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_text("[profile a]\nregion = eu-west-1\n[profile b]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    clients = StsClients()
    first, second = clients.session("a"), clients.session("b")
    assert first.get_component("data_loader") is second.get_component("data_loader")


def test_an_echoed_request_is_redacted_and_bounded() -> None:
    echo = (
        "Bad request: Authorization=AWS4-HMAC-SHA256 "
        f"Credential={KEY_ID}/20261129/us-east-1/sts/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={SIGNATURE} X-Amz-Security-Token: {TOKEN} "
        f"secret {SECRET} " + "padding " * 100
    )
    error = translate_sts_error(
        client_error("InvalidRequest", echo), action="AssumeRole", profile="prod", target="arn"
    )
    for secret in (KEY_ID, SECRET, TOKEN, SIGNATURE, TOKEN[:32], SECRET[:32]):
        assert secret not in error.message
    assert "<redacted>" in error.message
    assert len(error.message) < MAX_UPSTREAM_TEXT + 200


def test_redaction_keeps_what_a_human_needs() -> None:
    text = "User: arn:aws:sts::111111111111:assumed-role/dev/rolebroker-alice is not authorized"
    assert redact(text) == text


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://sts.test"), StsTimeout),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://sts.test"), StsUnavailable),
        (client_error("Throttling", "Rate exceeded"), StsUnavailable),
    ],
)
def test_unavailable_and_timeout_name_the_endpoint(exc: Exception, kind: type[Exception]) -> None:
    error = translate_sts_error(
        exc, action="AssumeRole", profile="p", target="t", endpoint="https://sts.x.test"
    )
    assert isinstance(error, kind)
    assert "https://sts.x.test" in error.message


def test_unparsable_answers_are_bad_responses() -> None:
    error = translate_sts_error(
        botocore.parsers.ResponseParserError("Unable to parse response (syntax error)"),
        action="AssumeRole",
        profile="p",
        target="t",
        endpoint="https://sts.x.test",
    )
    assert isinstance(error, StsBadResponse) and error.status == 502
    with pytest.raises(StsBadResponse):
        issued_credentials({}, endpoint="https://sts.x.test")
    with pytest.raises(StsBadResponse):
        issued_credentials({"Credentials": {"AccessKeyId": "A"}}, endpoint="https://sts.x.test")


def test_validation_errors_wait_for_a_config_change() -> None:
    error = translate_sts_error(
        client_error("ValidationError", "DurationSeconds exceeds the MaxSessionDuration"),
        action="AssumeRole",
        profile="p",
        target="t",
    )
    assert isinstance(error, StsInvalidRequest) and error.needs_config_change and error.status == 400


@pytest.mark.parametrize(
    ("sts_code", "kind", "code"),
    [
        ("AccessDenied", AccessDenied, "AccessDenied"),
        ("InvalidClientTokenId", SourceCredentialsRejected, "SourceCredentialsRejected"),
        ("RegionDisabledException", StsRefused, "StsRefused"),
        ("Weird<Code>", StsRefused, "StsRefused"),
    ],
)
def test_sts_codes_map_to_catalogue_classes(sts_code: str, kind: type[Exception], code: str) -> None:
    # STS's own code never becomes the daemon's: an unknown one is StsRefused, named in the message.
    error = translate_sts_error(
        client_error(sts_code, "nope"), action="AssumeRole", profile="p", target="arn:aws:iam::1:role/r"
    )
    assert type(error) is kind and error.code == code and error.status == 403
    assert sts_code in error.message or kind is AccessDenied
