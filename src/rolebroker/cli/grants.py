"""``rolebroker grant`` and ``rolebroker grants``: credentials for the endpoint that cover
only some profiles, for a while; and the grants ``env`` and ``exec`` hand to clients instead
of the master token.

A grant string is printed once, on stdout, by ``grant``; ``grants`` lists names, profiles and
times only. The daemon keeps no grant string: it recomputes each from the master token and
the grant's id, and so can the CLI, which reads the token file. ``env`` uses that to hand
every shell of a profile the same untimed grant instead of piling up a new one per shell.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from rolebroker.cli.client import DaemonClient
from rolebroker.cli.grantclient import new_grant
from rolebroker.cli.options import daemon_options, daemon_settings, reported
from rolebroker.grantcode import DEFAULT_EXEC_TTL, parse_duration


def duration(text: str | None) -> float | None:
    """A --ttl value in seconds (None: none given); a bad one is a usage error."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None


@click.command("grant")
@click.argument("profiles", nargs=-1)
@click.option("--ttl", help="Lifetime, e.g. 90s, 30m, 2h, 1d, 1h30m [default: no expiry]")
@click.option("--name", help="A label to list and revoke it by [default: PROFILE-xxxxxx]")
@click.option("--revoke", "revoke", metavar="NAME", help="Revoke the grant with this name (or id).")
@click.option("--revoke-all", is_flag=True, help="Revoke every grant.")
@daemon_options
def grant_command(
    profiles: Sequence[str],
    ttl: str | None,
    name: str | None,
    revoke: str | None,
    revoke_all: bool,
    port: int | None,
    token_file: Path | None,
) -> None:
    """Make a grant: a credential for the endpoint that serves only PROFILES.

    \b
    rolebroker grant prod --ttl 2h --name ci     # prints the grant on stdout
    rolebroker grant --revoke ci
    rolebroker grant --revoke-all

    Give it to a client as AWS_CONTAINER_AUTHORIZATION_TOKEN: it gets PROFILES and nothing
    else (403 GrantScope), until it expires or is revoked; never /status or any admin route.
    """
    settings = daemon_settings(port, token_file)
    client = DaemonClient(settings)
    if revoke is not None or revoke_all:
        if profiles or ttl or name or (revoke is not None and revoke_all):
            raise click.UsageError("--revoke NAME and --revoke-all take no profile, --ttl or --name")
        with reported():
            revoked = client.revoke_grants(None if revoke_all else revoke)
        click.echo(f"revoked: {', '.join(revoked)}" if revoked else "nothing to revoke", err=True)
        return
    if not profiles:
        raise click.UsageError("name at least one profile: rolebroker grant PROFILE... [--ttl 2h]")
    seconds = duration(ttl)
    with reported():
        made = new_grant(client, list(profiles), seconds, name)
    click.echo(made["grant"])
    until = f"until {made.get('expires_at')}" if made.get("expires_at") else "with no expiry"
    first = profiles[0]
    served = ", ".join(made.get("profiles") or profiles)
    click.echo(
        f"rolebroker: grant {made.get('name')!r} serves {served} {until}.\n"
        f"  Use it as AWS_CONTAINER_AUTHORIZATION_TOKEN with\n"
        f"  AWS_CONTAINER_CREDENTIALS_FULL_URI={client.creds_url(first)}\n"
        f"  Revoke it: rolebroker grant --revoke {made.get('name')}",
        err=True,
    )


@click.command("grants")
@click.option("--json", "as_json", is_flag=True, help="As JSON, for scripts (never a grant string).")
@daemon_options
def grants_command(as_json: bool, port: int | None, token_file: Path | None) -> None:
    """List grants: name, profiles, state, expiry, last use. Never a grant string."""
    settings = daemon_settings(port, token_file)
    with reported():
        rows = DaemonClient(settings).grants()
    if as_json:
        click.echo(json.dumps({"grants": rows}, indent=2, sort_keys=True))
        return
    click.echo(format_grants(rows, time.time()), nl=False)


def format_grants(rows: Sequence[Mapping[str, Any]], _now: float) -> str:
    if not rows:
        return "no grants; make one: rolebroker grant PROFILE --ttl 2h\n"
    header = f"{'NAME':<28} {'STATE':<8} {'EXPIRES':<21} {'LAST USED':<21} PROFILES"
    lines = [header]
    for row in rows:
        profiles = row.get("profiles")
        shown = ", ".join(str(p) for p in profiles) if isinstance(profiles, list) else "?"
        lines.append(
            f"{str(row.get('name', '?'))[:28]:<28} {row.get('state', '?')!s:<8} "
            f"{row.get('expires_at') or 'never'!s:<21} {row.get('last_used') or '-'!s:<21} {shown}"
        )
    return "\n".join(lines) + "\n"


COMMANDS: tuple[click.Command, ...] = (grant_command, grants_command)

__all__ = ["COMMANDS", "DEFAULT_EXEC_TTL", "duration"]
