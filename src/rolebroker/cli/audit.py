"""``rolebroker audit``: who asked the daemon for which credentials, read from its audit log.

Reads the file directly (no request to the daemon, no token): the log is the user's own
0600 file, and reading it must work while the daemon is stopped, e.g. after an incident.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from rolebroker import auditlog, discovery


def audit_file(environ: Mapping[str, str]) -> Path:
    """The running daemon's audit file (from its discovery file), else the default path."""
    found = discovery.read(discovery.discovery_file(environ))
    if found is not None and found.audit_file is not None:
        return found.audit_file
    return auditlog.default_audit_file(environ)


@click.command("audit")
@click.option("--profile", "-p", help="Only requests for this profile.")
@click.option("--grant", "-g", help="Only requests made with this grant (its name).")
@click.option("--since", "-s", help="Only records since: a duration (90s, 15m, 1h, 2d, 1w) or a time.")
@click.option("--last", "-n", type=click.IntRange(min=1), help="Only the N newest matching records.")
@click.option("--follow", "-f", "follow_", is_flag=True, help="Keep printing new records as they come.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (the file's records).")
@click.option(
    "--file",
    "file_",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The audit file [default: the running daemon's, else $XDG_STATE_HOME/rolebroker/audit.jsonl]",
)
def audit_command(
    profile: str | None,
    grant: str | None,
    since: str | None,
    last: int | None,
    follow_: bool,
    as_json: bool,
    file_: Path | None,
) -> None:
    """Show who asked for credentials: time, profile, outcome (OK or the error the client
    got), grant, uid, pid, program and command line of every credential request, served or
    refused. Never a secret: the daemon writes no token, grant string or key."""
    path = file_ or audit_file(os.environ)
    try:
        after = auditlog.parse_since(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    if not follow_ and not _exists(path):
        click.echo(
            f"rolebroker: no audit log at {path} yet: the daemon writes one line per credential "
            "request there (pass --file if it writes elsewhere)",
            err=True,
        )
        return
    records: Iterator[dict[str, Any]]
    if follow_:
        records = auditlog.follow(path, profile, after, grant=grant, last=last)
    else:
        records = auditlog.read_audit(path, profile, after, grant=grant, last=last)
    lines = (auditlog.json_line(r) for r in records) if as_json else auditlog.format_table(records)
    try:
        for line in lines:
            click.echo(line)
            if follow_:
                sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C ends --follow: no traceback
        pass
    except BrokenPipeError:  # `rolebroker audit | head`: stop quietly, also at exit's flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _exists(path: Path) -> bool:
    return path.exists() or auditlog.rotated(path, 1).exists()


COMMANDS: tuple[click.Command, ...] = (audit_command,)
