"""The ``GET /status`` document, typed: built by the daemon (statusview.py), read by
``rolebroker status`` and ``rolebroker doctor``.

One definition for both sides, so a field renamed on one side cannot silently become ``?``
on the other. Light on purpose (dataclasses only): the CLI imports it. ``from_json`` is
lenient: it reads whatever an older or newer daemon sends, a field of the wrong type is
treated as missing. Nothing here is ever a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A daemon error as ``{"code", "message"}``, with ``at`` (UTC) for a profile's last error."""

    code: str
    message: str
    at: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.at is not None:
            body["at"] = self.at
        return body

    @classmethod
    def from_json(cls, value: Any) -> ErrorInfo | None:
        if not isinstance(value, Mapping):
            return None
        return cls(
            code=_str(value.get("code")) or "?",
            message=_str(value.get("message")) or "",
            at=_str(value.get("at")),
        )

    @classmethod
    def with_time(cls, error: Mapping[str, Any], at: str | None) -> ErrorInfo:
        """From a BrokerError's ``to_json()``."""
        return cls(code=str(error.get("code", "?")), message=str(error.get("message", "")), at=at)


@dataclass(frozen=True, slots=True)
class MfaStatus:
    """The MFA session of a profile's chain (present only for chains with mfa_serial)."""

    serial: str
    state: str
    """``required``, ``active`` or ``expiring``."""
    expires_at: str | None = None
    expires_in_seconds: int | None = None
    process: bool = False
    """Whether the profile has an ``mfa_process`` that asks for codes."""
    process_running: bool = False

    def to_json(self) -> dict[str, Any]:
        """Flat ``mfa_*`` keys in the profile's row, as the daemon has always sent them."""
        return {
            "mfa_serial": self.serial,
            "mfa_state": self.state,
            "mfa_expires_at": self.expires_at,
            "mfa_expires_in_seconds": self.expires_in_seconds,
            "mfa_process": self.process,
            "mfa_process_running": self.process_running,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> MfaStatus | None:
        serial, state = _str(row.get("mfa_serial")), _str(row.get("mfa_state"))
        if serial is None or state is None:
            return None
        return cls(
            serial=serial,
            state=state,
            expires_at=_str(row.get("mfa_expires_at")),
            expires_in_seconds=_int(row.get("mfa_expires_in_seconds")),
            process=row.get("mfa_process") is True,
            process_running=row.get("mfa_process_running") is True,
        )


@dataclass(frozen=True, slots=True)
class CallerInfo:
    """Who last got a profile's credentials: process id and executable as the kernel showed
    them, when (UTC), and the grant's name (None: the master token)."""

    pid: int | None = None
    exe: str | None = None
    at: str | None = None
    grant: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "exe": self.exe, "at": self.at, "grant": self.grant}

    @classmethod
    def from_json(cls, value: Any) -> CallerInfo | None:
        if not isinstance(value, Mapping):
            return None
        return cls(
            pid=_int(value.get("pid")),
            exe=_str(value.get("exe")),
            at=_str(value.get("at")),
            grant=_str(value.get("grant")),
        )


@dataclass(frozen=True, slots=True)
class ProfileStatus:
    """One profile's row; times are UTC ``YYYY-MM-DDTHH:MM:SSZ``."""

    name: str
    state: str
    """``fresh``, ``stale``, ``refreshing``, ``cold``, ``error`` or ``mfa_required``."""
    requests: int = 0
    last_used: str | None = None
    kept_warm: bool = False
    cached: bool = False
    role_arn: str | None = None
    chain: tuple[str, ...] = ()
    expires_at: str | None = None
    expires_in_seconds: int | None = None
    refresh_at: str | None = None
    last_refresh: str | None = None
    last_error: ErrorInfo | None = None
    sts_calls: int = 0
    mfa: MfaStatus | None = None
    last_caller: CallerInfo | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "requests": self.requests,
            "last_used": self.last_used,
            "kept_warm": self.kept_warm,
            "cached": self.cached,
            "role_arn": self.role_arn,
            "chain": list(self.chain),
            "expires_at": self.expires_at,
            "expires_in_seconds": self.expires_in_seconds,
            "refresh_at": self.refresh_at,
            "last_refresh": self.last_refresh,
            "last_error": self.last_error.to_json() if self.last_error else None,
            "sts_calls": self.sts_calls,
            "last_caller": self.last_caller.to_json() if self.last_caller else None,
        }
        if self.mfa is not None:
            row.update(self.mfa.to_json())
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> ProfileStatus:
        chain = row.get("chain")
        return cls(
            name=_str(row.get("name")) or "?",
            state=_str(row.get("state")) or "?",
            requests=_int(row.get("requests")) or 0,
            last_used=_str(row.get("last_used")),
            kept_warm=row.get("kept_warm") is True,
            cached=row.get("cached") is True,
            role_arn=_str(row.get("role_arn")),
            chain=tuple(str(h) for h in chain) if isinstance(chain, list) else (),
            expires_at=_str(row.get("expires_at")),
            expires_in_seconds=_int(row.get("expires_in_seconds")),
            refresh_at=_str(row.get("refresh_at")),
            last_refresh=_str(row.get("last_refresh")),
            last_error=ErrorInfo.from_json(row.get("last_error")),
            sts_calls=_int(row.get("sts_calls")) or 0,
            mfa=MfaStatus.from_json(row),
            last_caller=CallerInfo.from_json(row.get("last_caller")),
        )


@dataclass(frozen=True, slots=True)
class StatusDoc:
    """The whole document. ``None`` where a daemon did not say (the CLI prints ``?``)."""

    version: str | None = None
    pid: int | None = None
    uptime_seconds: int | None = None
    listen: str | None = None
    refresh_before_seconds: float | None = None
    aws_config_files: tuple[str, ...] = ()
    config_error: ErrorInfo | None = None
    """Why the AWS config could not be read (the last good version is served)."""
    settings_error: str | None = None
    """Why rolebroker's own settings could not be re-read (the previous ones stay)."""
    sts_calls_total: int = 0
    audit_file: str | None = None
    grants_file: str | None = None
    caller_identity: str | None = None
    """``netlink``, ``proc`` or ``unavailable``: how the daemon learns who calls (with
    ``unavailable`` it cannot refuse other users' connections by uid)."""
    profiles: tuple[ProfileStatus, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pid": self.pid,
            "uptime_seconds": self.uptime_seconds,
            "listen": self.listen,
            "refresh_before_seconds": self.refresh_before_seconds,
            "aws_config_files": list(self.aws_config_files),
            "config_error": self.config_error.to_json() if self.config_error else None,
            "settings_error": self.settings_error,
            "sts_calls_total": self.sts_calls_total,
            "audit_file": self.audit_file,
            "grants_file": self.grants_file,
            "caller_identity": self.caller_identity,
            "profiles": [profile.to_json() for profile in self.profiles],
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> StatusDoc:
        files = body.get("aws_config_files")
        profiles = body.get("profiles")
        return cls(
            version=_str(body.get("version")),
            pid=_int(body.get("pid")),
            uptime_seconds=_int(body.get("uptime_seconds")),
            listen=_str(body.get("listen")),
            refresh_before_seconds=_number(body.get("refresh_before_seconds")),
            aws_config_files=tuple(str(f) for f in files) if isinstance(files, list) else (),
            config_error=ErrorInfo.from_json(body.get("config_error")),
            settings_error=_str(body.get("settings_error")) or None,
            sts_calls_total=_int(body.get("sts_calls_total")) or 0,
            audit_file=_str(body.get("audit_file")),
            grants_file=_str(body.get("grants_file")),
            caller_identity=_str(body.get("caller_identity")),
            profiles=tuple(
                ProfileStatus.from_json(_object(row))
                for row in (profiles if isinstance(profiles, list) else [])
                if isinstance(row, Mapping)
            ),
        )
