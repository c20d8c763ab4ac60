"""``rolebroker port80 [--apply] [--remove]``: print, or run through sudo, the nftables
redirect that lets your own ``curl localhost/creds/prod`` reach your daemon. The set-up
itself is data in port80_setup.py, imported only when the command runs."""

from __future__ import annotations

import os
from pathlib import Path

import click

from rolebroker.cli.options import daemon_options, daemon_settings

HELP_APPLY = "Run the commands (through sudo when not root) instead of printing them"


@click.command("port80")
@click.option("--apply", "apply_", is_flag=True, help=HELP_APPLY)
@click.option("--remove", is_flag=True, help="Remove the redirect (and its boot unit) instead")
@click.option(
    "--persist/--no-persist",
    default=True,
    help="Also write a system unit that re-applies the rule at boot [default: persist]",
)
@click.option("--uid", type=click.IntRange(min=0), help="Whose connections to redirect [default: yours]")
@daemon_options
def port80_command(
    apply_: bool, remove: bool, persist: bool, uid: int | None, port: int | None, token_file: Path | None
) -> None:
    """Make `curl http://localhost/creds/PROFILE` reach your daemon, for your processes only.

    One nftables table per user (inet rolebroker-port80-UID) redirects your own connections
    to 127.0.0.1:80 and [::1]:80 to the daemon's port: other users' port 80 is untouched,
    nothing runs as root, and the daemon still sees who calls. For curl without a token, the
    daemon also needs `same_user_without_token = true` in config.toml (see README: Security).
    Safe to run again; --remove undoes it.
    """
    from rolebroker.cli import port80_setup as setup

    try:
        who = setup.current_uid(override=uid)
        if remove:
            plan = setup.remove_plan(who, persist=persist)
        else:
            plan = setup.setup_plan(who, daemon_settings(port, token_file).port, persist=persist)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not apply_:
        click.echo(setup.render(plan, sudo=os.geteuid() != 0), nl=False)
        flag = " --remove" if remove else ""
        click.echo(f"# nothing was changed: run `rolebroker port80{flag} --apply` to do this", err=True)
    else:
        try:
            for line in setup.apply(plan):
                click.echo(line)
        except setup.Port80Error as exc:
            raise click.ClickException(str(exc)) from None
    if not remove:
        click.echo(
            f"# for curl without a token, the daemon needs this line in its config.toml "
            f"({_config_path()}), then `rolebroker reload` (or a restart):\n#   {setup.TOKENLESS_LINE}\n"
            "# any process of yours can then fetch credentials without the token (see README: Security); "
            "check it all with: rolebroker doctor --port80",
            err=True,
        )


def _config_path() -> Path:
    from rolebroker.config import default_config_file

    named = os.environ.get("ROLEBROKER_CONFIG")
    return Path(named) if named else default_config_file(os.environ)


COMMANDS: tuple[click.Command, ...] = (port80_command,)
