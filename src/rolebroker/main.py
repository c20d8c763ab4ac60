"""The ``rolebroker`` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import uvicorn

from rolebroker import __version__, systemd
from rolebroker.config import Settings, is_loopback_host, load_settings

log = logging.getLogger("rolebroker")

_SELF_REFERENCES = (
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)


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
    from rolebroker.commands import settings_for
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
    run_daemon(settings, reload_settings=lambda: load_settings(flags))


def harden_environment() -> None:
    """The daemon must never resolve a root profile through itself (FULL_URI inherited
    from a shell that ran ``rolebroker env``), nor wait on EC2 metadata for a profile
    that simply has no credentials."""
    for name in _SELF_REFERENCES:
        os.environ.pop(name, None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def run_daemon(settings: Settings, *, reload_settings: Callable[[], Settings] | None = None) -> None:
    """Serve until SIGTERM. ``reload_settings`` re-reads env and file on SIGHUP with the
    same flags, so flags keep winning."""
    from rolebroker.authtoken import TokenFileError, load_or_create_token
    from rolebroker.broker import Broker
    from rolebroker.connections import connection_limits
    from rolebroker.limits import raise_file_limit
    from rolebroker.server import create_app

    harden_environment()
    try:
        token = load_or_create_token(settings.token_file)
    except (TokenFileError, OSError) as exc:
        raise click.ClickException(f"cannot use the token file: {exc}") from None

    sockets = _inherited_sockets()
    if sockets:
        # Socket activation decides where we listen; /status and the logs should say so.
        host, port = systemd.socket_address(sockets[0])
        settings = replace(settings, host=host, port=port)
    broker = Broker(settings, reload_settings=reload_settings or load_settings)
    reloads: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    def on_sighup() -> None:
        task = asyncio.get_running_loop().create_task(_reload(broker))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_startup() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)

    app = create_app(broker, token, on_startup=on_startup)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        **connection_limits(raise_file_limit()),
    )
    server = _Server(config)

    async def main() -> None:
        notifier = asyncio.get_running_loop().create_task(_announce_ready(server, settings, bool(sockets)))
        try:
            await server.serve(sockets=sockets or None)
        finally:
            notifier.cancel()

    asyncio.run(main())
    if not server.started:
        raise SystemExit(1)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM with the default handler inside serve(), so nothing after
    ``await server.serve()`` runs on SIGTERM: announce STOPPING=1 when shutdown starts."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("rolebroker stopping")
        systemd.notify("STOPPING=1")
        await super().shutdown(sockets=sockets)


def _inherited_sockets() -> list[socket.socket]:
    """Sockets passed by systemd, refused unless they are TCP listeners on loopback."""
    try:
        sockets = systemd.listen_sockets()
        for sock in sockets:
            host, port = systemd.socket_address(sock)
            if not is_loopback_host(host):
                raise ValueError(
                    f"the socket passed by systemd is bound to {host}:{port}, not loopback; "
                    "rolebroker only serves 127.0.0.1, ::1 or localhost"
                )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return sockets


async def _reload(broker: Any) -> None:
    systemd.notify(systemd.reloading_message())
    try:
        await broker.reload(reason="SIGHUP")
    finally:
        systemd.notify("READY=1")


async def _announce_ready(server: Any, settings: Settings, activated: bool) -> None:
    """READY=1 only once the socket accepts connections, so dependants never race us."""
    while not server.started:
        await asyncio.sleep(0.02)
    where = "socket passed by systemd" if activated else settings.base_url
    log.info("rolebroker %s listening on %s; token file %s", __version__, where, settings.token_file)
    systemd.notify(f"READY=1\nSTATUS=serving on {where}")


from rolebroker.commands import register  # noqa: E402  (the commands need `cli` defined first)

register(cli)


if __name__ == "__main__":
    cli()
