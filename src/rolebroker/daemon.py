"""The daemon process: token, listeners, the HTTP server, signals, readiness, discovery file.

``rolebroker serve`` (main.py) and the demo call :func:`run_daemon`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
import uvicorn

from rolebroker import __version__, discovery, systemd
from rolebroker.config import Settings, load_settings
from rolebroker.discovery import INSIDE_DAEMON
from rolebroker.listeners import EX_CONFIG, ListenError, Listeners, open_listeners

if TYPE_CHECKING:
    from rolebroker.audit import AuditLog
    from rolebroker.authtoken import TokenStore
    from rolebroker.broker import Broker
    from rolebroker.containerinfo import Lookup
    from rolebroker.grants import GrantStore

log = logging.getLogger("rolebroker")

_SELF_REFERENCES = (
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)


class StartupError(click.ClickException):
    """The daemon cannot start (exit 1: a service manager may retry)."""


class PortUnavailable(StartupError):
    """Someone else holds the port: restarting cannot help, so a distinct status (78)."""

    exit_code = EX_CONFIG


def harden_environment() -> None:
    """The daemon must never resolve a root profile through itself (FULL_URI inherited
    from a shell that ran ``rolebroker env``, or a credential_process running rolebroker),
    nor wait on EC2 metadata for a profile that simply has no credentials."""
    for name in _SELF_REFERENCES:
        os.environ.pop(name, None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    # A credential_process the daemon runs must not ask the daemon back (export.py).
    os.environ[INSIDE_DAEMON] = str(os.getpid())


def run_daemon(
    settings: Settings,
    *,
    reload_settings: Callable[[], Settings] | None = None,
    warm_file: Path | None = None,
    discovery_path: Path | None = None,
    state_dir: Path | None = None,
) -> None:
    """Serve until SIGTERM (see :func:`_serve`).

    The garbage collector is off while the daemon starts: FastAPI, pydantic and botocore
    allocate some hundred thousand objects that all live as long as the process, and the
    collections they trigger (about 40 ms of a 400 ms start) can free none of them. Once the
    daemon is ready they are frozen (gc.freeze: never scanned again, which also keeps later
    collections short on the warm path) and collection resumes."""
    gc.disable()
    try:
        _serve(
            settings,
            reload_settings=reload_settings,
            warm_file=warm_file,
            discovery_path=discovery_path,
            state_dir=state_dir,
        )
    finally:
        gc.enable()


def _serve(
    settings: Settings,
    *,
    reload_settings: Callable[[], Settings] | None,
    warm_file: Path | None,
    discovery_path: Path | None,
    state_dir: Path | None,
) -> None:
    """Serve until SIGTERM. ``reload_settings`` re-reads env and file on SIGHUP with the
    same flags, so flags keep winning. ``warm_file`` remembers the profiles to warm at the
    next start and ``discovery_path`` tells the CLI where the daemon is: both None for
    throw-away daemons such as the demo's, which must not pose as the user's daemon.
    ``state_dir`` holds the grants file and the audit log (default
    ``$XDG_STATE_HOME/rolebroker``; the demo passes its own temporary directory)."""
    from rolebroker.audit import AuditLog, default_audit_file
    from rolebroker.authtoken import TokenFileError, TokenStore, load_or_create_token
    from rolebroker.broker import Broker
    from rolebroker.callers import identity_method
    from rolebroker.connections import connection_limits
    from rolebroker.grants import GrantStore, default_grants_file
    from rolebroker.limits import raise_file_limit
    from rolebroker.server import create_app

    harden_environment()
    try:
        token = TokenStore(load_or_create_token(settings.token_file), settings.token_file)
    except (TokenFileError, OSError) as exc:
        raise StartupError(f"cannot use the token file: {exc}") from None
    from rolebroker.container_server import ADDRESS as CONTAINER_ADDRESS

    try:
        listeners = open_listeners(settings.host, settings.port, container_address=CONTAINER_ADDRESS)
    except ListenError as exc:
        raise (PortUnavailable if exc.status == EX_CONFIG else StartupError)(str(exc)) from None

    host, port = listeners.addresses[0]
    # The sockets decide where we listen; /status and the logs should say so.
    settings = replace(settings, host=host, port=port)
    broker = Broker(settings, reload_settings=reload_settings or load_settings, warm_file=warm_file)
    reloads: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    def on_sighup() -> None:
        task = asyncio.get_running_loop().create_task(_reload(broker))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_startup() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)

    # The daemon's one GrantStore and AuditLog: every listener's app gets these instances.
    grants_file = state_dir / "grants.json" if state_dir else default_grants_file(os.environ)
    audit_file = state_dir / "audit.jsonl" if state_dir else default_audit_file(os.environ)
    grants = GrantStore(grants_file, lambda: token.current)
    audit = AuditLog(audit_file, secrets=lambda: (token.current,), containers=_container_lookup(settings))
    audit.start()

    async def on_shutdown() -> None:
        await asyncio.to_thread(grants.flush)
        await asyncio.to_thread(audit.close)

    app = create_app(
        broker,
        token,
        grants=grants,
        audit=audit,
        caller_identity=identity_method(),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    file_limit = raise_file_limit()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,  # uvicorn refreshes it on a 0.1 s tick; the Guard adds its own (server.py)
        lifespan="on",
        timeout_graceful_shutdown=5,
        **connection_limits(file_limit),
    )
    side = _container_server(settings, broker, token, grants, audit, file_limit, passed=listeners.container)

    def unpublish() -> None:
        if discovery_path is not None:
            discovery.remove(discovery_path, os.getpid())

    server = _Server(config, on_stop=unpublish, side=side)

    async def main() -> None:
        notifier = asyncio.get_running_loop().create_task(
            _announce_ready(server, settings, listeners, discovery_path, audit.path)
        )
        if side is not None:
            side.begin()
        try:
            await server.serve(sockets=listeners.sockets)
        finally:
            notifier.cancel()

    try:
        asyncio.run(main())
    finally:
        unpublish()
        held = [listeners.container, side.sock if side is not None else None]
        for sock in [*listeners.sockets, *(s for s in held if s is not None)]:
            sock.close()
    if not server.started:
        raise SystemExit(1)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM with the default handler inside serve(), so nothing after
    ``await server.serve()`` runs on SIGTERM: announce STOPPING=1 (and remove the discovery
    file) when shutdown starts.

    uvicorn's main loop wakes ten times a second to look at ``should_exit``; an idle daemon
    should sleep, so this one waits for :meth:`handle_exit` to say so."""

    def __init__(
        self, config: uvicorn.Config, on_stop: Callable[[], None], side: ContainerServer | None = None
    ) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._side = side
        self._exit = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.on_tick(0)  # the default headers, once (the Guard adds a fresh Date)
        if not self.should_exit:
            await self._exit.wait()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in a signal handler: the loop may be inside select(), so wake it through
        its self-pipe, not with a plain Event.set()."""
        super().handle_exit(sig, frame)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._exit.set)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("rolebroker stopping")
        systemd.notify("STOPPING=1")
        self._on_stop()
        if self._side is not None:
            await self._side.stop()
        await super().shutdown(sockets=sockets)


class ContainerServer(uvicorn.Server):
    """The container listener (container_server.py): a second uvicorn server on the same
    loop, over its own socket and app. It neither captures signals nor runs a lifespan:
    the loopback server owns both and stops this one first (:meth:`stop`)."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config)
        self.sock = sock
        self._exit = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(sockets=[self.sock]))

    async def main_loop(self) -> None:
        await self.on_tick(0)
        await self._exit.wait()

    async def stop(self) -> None:
        self.should_exit = True
        self._exit.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 6)
            except Exception as exc:
                log.warning("container listener did not stop cleanly: %s", type(exc).__name__)


def _container_lookup(settings: Settings) -> Lookup | None:
    """What names the container behind a container-listener request in the audit log (run
    by the audit writer thread), or None when there is no listener or names are off."""
    if settings.containers == "off" or not settings.container_names:
        return None
    from rolebroker.containerinfo import container_names

    return container_names(os.environ).lookup


def _container_server(
    settings: Settings,
    broker: Broker,
    token: TokenStore,
    grants: GrantStore,
    audit: AuditLog | None,
    file_limit: int,
    *,
    passed: socket.socket | None = None,
) -> ContainerServer | None:
    """The container listener, or None (switched off, address missing in ``auto``, or port
    taken: then one clear line, and the daemon goes on serving loopback). ``passed`` is the
    container port held by the service manager (rolebroker-containers.socket): served as it
    is, on whatever port it has, and never bound here."""
    from rolebroker import container_server as cs
    from rolebroker.connections import connection_limits

    if settings.containers == "off":
        if passed is not None:
            log.warning(
                "container listener off (containers = off): not serving %s:%d, passed by the service "
                "manager; to stop holding it: systemctl --user disable --now rolebroker-containers.socket",
                cs.ADDRESS,
                passed.getsockname()[1],
            )
            passed.close()
        return None
    port = settings.container_port if passed is None else int(passed.getsockname()[1])
    where = f"{cs.ADDRESS}:{port}"
    present = cs.address_present()
    if not present and settings.containers == "auto" and passed is None:
        log.info(
            "container listener off: %s is not on this machine (for containers run: %s, then restart)",
            cs.ADDRESS,
            cs.SETUP_HINT,
        )
        return None
    if not present:
        log.warning(
            "container listener: %s is not on this machine yet; run: %s (listening on %s already: "
            "it works as soon as the address exists)",
            cs.ADDRESS,
            cs.SETUP_HINT,
            where,
        )
    if passed is not None:
        sock: socket.socket | None = passed
        passed.setblocking(False)
        origin = "passed by the service manager; "
        if port != settings.container_port:
            log.warning(
                "container listener: the service manager passed %s, but container_port is %d; serving "
                "%d: the set-up must forward port 80 there (rolebroker containers setup --port %d "
                "--apply), or set ListenStream=%s:%d in rolebroker-containers.socket",
                where,
                settings.container_port,
                port,
                port,
                cs.ADDRESS,
                settings.container_port,
            )
    else:
        origin = ""
        try:
            sock = cs.open_container_listener(port, freebind=settings.containers == "on")
        except cs.ContainerListenError as exc:
            log.warning(
                "container listener off: %s (set container_port to a free port; if "
                "rolebroker-containers.socket holds it, start the daemon through systemd: "
                "systemctl --user start rolebroker)",
                exc,
            )
            return None
    if sock is None:
        log.warning("container listener off: %s is missing; run: %s", cs.ADDRESS, cs.SETUP_HINT)
        return None
    app = cs.ContainerApp(broker, token, grants, audit)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        **connection_limits(max(64, file_limit // 8)),
    )
    log.info("container listener on %s (%sgrants only, credential routes only)", where, origin)
    return ContainerServer(config, sock)


async def _reload(broker: Any) -> None:
    systemd.notify(systemd.reloading_message())
    try:
        await broker.reload(reason="SIGHUP")
    finally:
        systemd.notify("READY=1")


async def _announce_ready(
    server: Any,
    settings: Settings,
    listeners: Listeners,
    discovery_path: Path | None,
    audit_file: Path | None = None,
) -> None:
    """READY=1 only once the sockets accept connections, so dependants never race us."""
    while not server.started:
        await asyncio.sleep(0.02)
    where = listeners.describe() + (" (passed by the service manager)" if listeners.activated else "")
    info = discovery.DaemonInfo(
        port=settings.port,
        addresses=tuple(a for a, _p in listeners.addresses),
        token_file=settings.token_file.absolute(),
        pid=os.getpid(),
        audit_file=audit_file.absolute() if audit_file is not None else None,
    )
    if discovery_path is not None:
        try:
            await asyncio.to_thread(discovery.write, discovery_path, info)
        except OSError as exc:
            log.warning("cannot write %s (the CLI then needs --port): %s", discovery_path, exc)
    log.info("rolebroker %s listening on %s; token file %s", __version__, where, settings.token_file)
    systemd.notify(f"READY=1\nSTATUS=serving on {where}")
    gc.freeze()  # what start-up built lives as long as the process (run_daemon)
    gc.enable()
