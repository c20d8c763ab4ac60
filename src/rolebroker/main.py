"""The ``rolebroker`` command line."""

from __future__ import annotations

import os
from pathlib import Path

import click

from rolebroker import __version__
from rolebroker.config import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rolebroker")
def cli() -> None:
    """A local ECS credentials endpoint: assumes, caches and refreshes the roles of your
    AWS profiles so that every SDK, the AWS CLI and Serverless get fresh credentials from
    AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/creds/PROFILE."""


@cli.command()
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
def serve(
    host: str | None,
    port: int | None,
    refresh_before: float | None,
    token_file: Path | None,
    log_level: str | None,
) -> None:
    """Run the daemon in the foreground (systemd and launchd run it this way)."""
    from rolebroker import discovery, warmset
    from rolebroker.commands import settings_for
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


from rolebroker.commands import register  # noqa: E402  (the commands need `cli` defined first)

register(cli)


if __name__ == "__main__":
    cli()
