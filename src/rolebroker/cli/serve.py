"""``serve`` and ``demo``: the commands that run a daemon. Their bodies import the daemon
side (uvicorn, FastAPI, botocore sessions) only when they run, so the other commands never
pay for it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from rolebroker.cli.options import settings_for
from rolebroker.config import DEFAULT_PORT, load_settings


class _ServeCommand(click.Command):
    """``serve --help`` ends with every setting, its variable and default, and the config file."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from rolebroker.cli.helptopic import settings_text

        formatter.write("\n")
        for line in settings_text().splitlines():
            formatter.write(f"{line}\n" if line.startswith("  ") else f"  {line}\n")


@click.command("serve", cls=_ServeCommand)
@click.option("--host", help="Loopback address to listen on [default: 127.0.0.1; env ROLEBROKER_HOST]")
@click.option("--port", type=int, help="Port to listen on [default: 9911; env ROLEBROKER_PORT]")
@click.option(
    "--refresh-before",
    type=float,
    help="Renew credentials this many seconds before they expire "
    "[default: 1200; env ROLEBROKER_REFRESH_BEFORE]",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    help="Where the auth token lives [env ROLEBROKER_TOKEN_FILE]",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[default: info]")
def serve_command(
    host: str | None,
    port: int | None,
    refresh_before: float | None,
    token_file: Path | None,
    log_level: str | None,
) -> None:
    """Run the daemon in the foreground (systemd and launchd run it this way)."""
    from rolebroker import discovery, warmset
    from rolebroker.daemon import run_daemon
    from rolebroker.logs import configure_logging

    flags = {
        "host": host,
        "port": port,
        "refresh_before": refresh_before,
        "token_file": token_file,
        "log_level": log_level,
    }
    settings = settings_for(port, token_file, host=host, refresh_before=refresh_before, log_level=log_level)
    configure_logging(settings.log_level)
    run_daemon(
        settings,
        reload_settings=lambda: load_settings(flags),
        warm_file=warmset.default_path(os.environ),
        discovery_path=discovery.discovery_file(os.environ),
    )


@click.command("demo")
@click.option(
    "--port", type=int, help=f"Port for the demo daemon [env ROLEBROKER_PORT; default {DEFAULT_PORT}]"
)
def demo_command(port: int | None) -> None:
    """Run rolebroker against an embedded local STS (needs moto: make demo in a checkout,
    or pipx install '.[demo]').

    Generates a throw-away AWS config, credentials and token with profiles dev and prod
    (chained across accounts), prints commands to try, and writes nothing under your home.
    """
    from rolebroker import demo

    demo.run(settings_for(port, None))


COMMANDS: tuple[click.Command, ...] = (serve_command, demo_command)
