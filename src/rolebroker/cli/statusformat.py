"""The ``status`` table: the daemon's typed /status document (statusdoc.py) as a human reads
it, every value that came from outside escaped. No click and nothing heavy here: ``status``
runs in shell prompts and through quick.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rolebroker.textsafe import escape

if TYPE_CHECKING:
    from rolebroker.statusdoc import CallerInfo, ProfileStatus, StatusDoc


def format_status(status: StatusDoc, now: float) -> str:
    """A table a human can read at a glance, then the full error messages."""
    lines = [
        f"rolebroker {status.version or '?'} on {status.listen or '?'} "
        f"(pid {status.pid if status.pid is not None else '?'}, up {_duration(status.uptime_seconds)}), "
        f"{status.sts_calls_total} STS calls, "
        f"renews {_duration(status.refresh_before_seconds)} before expiry",
    ]
    if status.aws_config_files:
        lines.append("AWS config: " + ", ".join(status.aws_config_files))
    config_error = status.config_error
    if config_error is not None and status.profiles:
        lines.append(
            f"AWS config error: {config_error.code}: {config_error.message} (serving the last good version)"
        )
    if status.audit_file:
        lines.append(f"Audit log: {escape(status.audit_file)} (rolebroker audit)")
    if status.caller_identity == "unavailable":
        lines.append(
            "Caller identity: unavailable on this system: no ForeignUser check, no pid or program "
            "in the audit log"
        )
    lines.append("")
    header = ("PROFILE", "STATE", "EXPIRES IN", "LAST REFRESH", "LAST ERROR", "LAST CALLER")
    rows = [header]
    details: list[str] = []
    for profile in status.profiles:
        rows.append(_row(profile, now))
        if profile.last_error is not None:
            details.append(f"{profile.name}: {profile.last_error.code}: {profile.last_error.message}")
    if not status.profiles and config_error is not None:
        lines.append(
            "No profiles: the daemon could not read the AWS config "
            f"({config_error.code}: {config_error.message}); fix it, then: rolebroker reload"
        )
    elif not status.profiles:
        lines.append("No profiles in the AWS config.")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
    if details:
        lines += ["", *details]
    return "\n".join(lines) + "\n"


def _row(profile: ProfileStatus, now: float) -> tuple[str, str, str, str, str, str]:
    error_cell = "-"
    if profile.last_error is not None:
        when = _ago(profile.last_error.at, now)
        error_cell = profile.last_error.code + (f" ({when})" if when != "-" else "")
    return (
        profile.name,
        profile.state,
        _duration(profile.expires_in_seconds),
        _ago(profile.last_refresh, now),
        error_cell,
        last_caller_cell(profile.last_caller, now),
    )


def last_caller_cell(caller: CallerInfo | None, now: float) -> str:
    """``python3 (pid 4321, 2m ago, grant ci)``: the program's name, escaped (it is what the
    caller's process shows); no grant means the master token (or a tokenless same-user call)."""
    if caller is None:
        return "-"
    program = escape(caller.exe.rsplit("/", 1)[-1]) if caller.exe else "unknown process"
    details = [f"pid {caller.pid}"] if caller.pid is not None else []
    when = _ago(caller.at, now)
    if when != "-":
        details.append(when)
    if caller.grant:
        details.append(f"grant {escape(caller.grant)}")
    return f"{program} ({', '.join(details)})" if details else program


def _duration(seconds: float | None) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    total = int(seconds)
    if total < 0:
        return "expired"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _ago(stamp: str | None, now: float) -> str:
    if not isinstance(stamp, str):
        return "-"
    then = utc_seconds(stamp)
    if then is None:
        return stamp
    return f"{_duration(max(0, now - then))} ago"


def utc_seconds(stamp: str) -> float | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` (the daemon's times) as a Unix time; None for anything else.
    Done by hand because time.strptime loads locale machinery worth more than the whole
    request (``status`` runs in shell prompts)."""
    if len(stamp) != 20 or stamp[4] + stamp[7] + stamp[10] + stamp[13] + stamp[16] + stamp[19] != "--T::Z":
        return None
    fields = (stamp[0:4], stamp[5:7], stamp[8:10], stamp[11:13], stamp[14:16], stamp[17:19])
    if not all(part.isascii() and part.isdigit() for part in fields):
        return None
    year, month, day, hour, minute, second = (int(part) for part in fields)
    if not (
        1 <= month <= 12 and 1 <= day <= _days_in(year, month) and hour < 24 and minute < 60 and second < 61
    ):
        return None
    return float(_days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + second)


def _days_in(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 in the proleptic Gregorian calendar: count whole years from
    March (so the leap day ends a year), then the days before the month."""
    shifted = year - 1 if month <= 2 else year
    era = shifted // 400
    year_of_era = shifted - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468
