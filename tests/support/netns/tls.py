"""A throwaway CA and a TLS terminator in front of plain-http moto."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.netns.constants import LOOPBACK, TLS_HOSTS


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # what the client trusts (NODE_EXTRA_CA_CERTS)
    cert: Path  # leaf chain served by the terminator
    key: Path


def make_tls_files(directory: Path, hosts: Sequence[str] = TLS_HOSTS) -> TlsFiles:
    """A throwaway CA and a leaf for ``hosts``, valid for a day. Fresh keys per run, so no
    key ever trusted anywhere else exists; the CA is only handed to the client under test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rolebroker test CA (throwaway)")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class TlsStats:
    """What the terminator saw, for the report: host names and volumes, never payloads."""

    sni: set[str] = field(default_factory=set)
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: list[str] = field(default_factory=list)


class TlsTerminator:
    """TLS on ``host:port`` piped byte for byte to a plain-http upstream.

    No HTTP parsing: the Host header, keep-alive and request bodies of any size pass
    through untouched, one upstream connection per client connection. Runs an asyncio
    loop in its own thread so that many keep-alive connections are served concurrently.
    """

    def __init__(self, tls: TlsFiles, upstream_port: int, host: str = LOOPBACK, port: int = 443) -> None:
        self._tls, self._upstream_port, self._host, self._port = tls, upstream_port, host, port
        self.stats = TlsStats()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tls", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._tls.cert, self._tls.key)

        def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if name:
                self.stats.sni.add(name.lower())

        ctx.sni_callback = remember_sni
        return ctx

    def start(self) -> TlsTerminator:
        self._thread.start()
        self._ready.wait(10)
        if self._failure is not None:
            raise RuntimeError(f"TLS terminator failed to start: {self._failure!r}")
        if not self._ready.is_set():
            raise TimeoutError("TLS terminator did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(self._on_loop_error)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Failed handshakes and resets are expected noise; keep a short note, not a trace."""
        exc = context.get("exception")
        self.stats.errors.append(type(exc).__name__ if exc else str(context.get("message")))

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._handle, self._host, self._port, ssl=self._context(), backlog=256
            )
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            # Kept-alive connections would outlive the server: end them before the loop goes.
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """Track every connection, so that :meth:`stop` can end the kept-alive ones."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            await self._relay(client_r, client_w)
        finally:
            self._tasks.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(LOOPBACK, self._upstream_port)
        except OSError as exc:
            self.stats.errors.append(f"upstream: {type(exc).__name__}")
            client_w.close()
            return
        up = asyncio.create_task(self._pipe(client_r, upstream_w, "up", half_close=True))
        down = asyncio.create_task(self._pipe(upstream_r, client_w, "down", half_close=False))
        try:
            await down  # the response side ends the exchange (moto closes, or the client went away)
        finally:
            up.cancel()
            down.cancel()
            for writer in (upstream_w, client_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str, half_close: bool
    ) -> None:
        """Copy until EOF; a client EOF is passed on as a TCP half-close so that the
        upstream still answers the last request."""
        try:
            while chunk := await reader.read(256 * 1024):
                if direction == "up":
                    self.stats.bytes_up += len(chunk)
                else:
                    self.stats.bytes_down += len(chunk)
                writer.write(chunk)
                await writer.drain()
            if half_close and writer.can_write_eof():
                writer.write_eof()
            elif not half_close:
                writer.close()
        except (ConnectionError, ssl.SSLError, OSError):
            writer.close()

    def stop(self) -> None:
        if self._stopping is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
