"""The typed /status document: what the daemon sends is what the CLI reads back, and a
document from another daemon (missing or mistyped fields) reads without a traceback."""

from __future__ import annotations

from rolebroker.statusdoc import CallerInfo, ErrorInfo, MfaStatus, ProfileStatus, StatusDoc

DOC = StatusDoc(
    version="0.1.0",
    pid=42,
    uptime_seconds=5,
    listen="http://127.0.0.1:9911",
    refresh_before_seconds=1200.0,
    aws_config_files=("/h/.aws/config",),
    config_error=ErrorInfo("ConfigFileError", "bad line 3"),
    settings_error=None,
    sts_calls_total=3,
    profiles=(
        ProfileStatus(name="orphan", state="error", last_error=ErrorInfo("SourceProfileNotFound", "x")),
        ProfileStatus(
            name="dev",
            state="mfa_required",
            requests=2,
            chain=("base", "dev"),
            last_error=ErrorInfo("MfaRequired", "run: rolebroker mfa dev", at="2026-01-01T00:00:00Z"),
            mfa=MfaStatus(serial="arn:aws:iam::1:mfa/me", state="required", process=True),
            last_caller=CallerInfo(pid=7, exe="/usr/bin/python3", at="2026-01-01T00:00:01Z", grant="ci"),
        ),
    ),
    audit_file="/h/.local/state/rolebroker/audit.jsonl",
    grants_file="/h/.local/state/rolebroker/grants.json",
    caller_identity="netlink",
)


def test_round_trip_keeps_every_field_and_the_flat_mfa_keys() -> None:
    body = DOC.to_json()
    assert StatusDoc.from_json(body) == DOC
    dev = body["profiles"][1]
    assert (dev["mfa_state"], dev["mfa_serial"], dev["mfa_process"]) == (
        "required",
        "arn:aws:iam::1:mfa/me",
        True,
    )
    assert "mfa_state" not in body["profiles"][0]  # no MFA keys for chains without MFA
    assert body["config_error"] == {"code": "ConfigFileError", "message": "bad line 3"}
    assert body["profiles"][0]["last_caller"] is None
    assert dev["last_caller"] == {
        "pid": 7,
        "exe": "/usr/bin/python3",
        "at": "2026-01-01T00:00:01Z",
        "grant": "ci",
    }


def test_a_document_of_another_daemon_reads_without_a_traceback() -> None:
    doc = StatusDoc.from_json(
        {
            "version": 3,
            "pid": "x",
            "config_error": "broken",
            "profiles": [
                {"name": "a", "last_error": {"code": "E"}, "chain": "nope", "last_caller": {"pid": "1"}},
                "junk",
                {},
            ],
            "caller_identity": 1,
            "refresh_before_seconds": True,
        }
    )
    assert (doc.version, doc.pid, doc.config_error, doc.refresh_before_seconds) == (None, None, None, None)
    assert [p.name for p in doc.profiles] == ["a", "?"]
    assert doc.profiles[0].last_error == ErrorInfo("E", "")
    assert doc.profiles[0].chain == ()
    assert doc.profiles[0].last_caller == CallerInfo() and doc.caller_identity is None
    assert StatusDoc.from_json({}) == StatusDoc()
