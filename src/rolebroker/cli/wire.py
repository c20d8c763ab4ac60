"""A small, strict HTTP/1.1 client over a plain socket, for the CLI's talk with its own daemon.

Why not ``http.client``: importing it loads the ``email`` package and OpenSSL, which cost the
commands a shell start runs (``rolebroker env``, ``status``) more than all of their own work.
The daemon (uvicorn with h11) answers JSON with a Content-Length on 127.0.0.1, so a client
that reads exactly that, and refuses everything it cannot read within fixed bounds, is enough:

- one deadline per connection covers the connect, every write and every read, so a server
  that drips a byte at a time cannot hold the CLI past its timeout (``TimeoutError``);
- the status line and headers are bounded (bytes and lines), a body by a cap the caller
  chooses; Content-Length, ``Transfer-Encoding: chunked`` and read-until-close are read,
  anything else is refused;
- a connection never reconnects: after ``Connection: close`` (or any failure) the next
  exchange raises NotConnected, so a proof given on one connection covers only that one.

No proxy settings apply, as in the SDKs' own container-credentials fetchers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

HEADER_BYTES = 64 * 1024
"""The status line and headers (or a chunked body's trailers) together."""

HEADER_LINES = 100

BODY_BYTES = 4 * 1024 * 1024
"""The default cap on a body: far above any reply of the daemon."""

CHUNK_LINE_BYTES = 1024
"""One chunk-size line, with any extensions."""

RECV_BYTES = 64 * 1024


class WireError(Exception):
    """The peer's reply is not HTTP/1.1 as this client reads it (the message says how)."""


class NotConnected(WireError):
    """The connection was closed (``Connection: close`` or an earlier failure); never reopened."""


class RemoteDisconnected(WireError):
    """The peer closed the connection before the first byte of a reply."""


class MalformedReply(WireError):
    pass


class ReplyTooLarge(WireError):
    pass


class IncompleteRead(WireError):
    """The peer closed the connection in the middle of a reply."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    """Names lower-cased, in the order received."""
    body: bytes
    will_close: bool

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower case), or None."""
        return next((value for key, value in self.headers if key == name), None)


class Connection:
    """One TCP connection and its deadline. ``exchange`` sends a request and reads its reply."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock: socket.socket | None = sock
        self._deadline = deadline
        self._buffer = bytearray()
        self._eof = False

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        body_limit: int = BODY_BYTES,
    ) -> Response:
        """Send one request and read its whole reply (at most ``body_limit`` bytes of body)."""
        if self._sock is None:
            raise NotConnected("the connection is closed")
        request = _request_bytes(method, target, headers, body)
        try:
            self._send(request)
            response = self._read_response(body_limit)
        except BaseException:
            self.close()  # the state of the stream is unknown: never use it again
            raise
        if response.will_close:
            self.close()
        return response

    # -- socket with the deadline -----------------------------------------------------------

    def _remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the deadline passed")
        return left

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.settimeout(self._remaining())
        self._sock.sendall(data)

    def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        if self._eof:
            return False
        assert self._sock is not None
        self._sock.settimeout(self._remaining())
        data = self._sock.recv(RECV_BYTES)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def _line(self, limit: int, what: str) -> bytes | None:
        """One line without its end (CRLF or LF) of at most ``limit`` bytes; None at the end
        of the stream before any byte of it."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                if end + 1 > limit:
                    break
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > limit:
                break
            start = len(self._buffer)
            if not self._fill():
                if not self._buffer:
                    return None
                raise IncompleteRead(f"the connection closed in the middle of {what}")
        raise ReplyTooLarge(f"{what} is longer than {limit} bytes")

    def _exactly(self, size: int, what: str) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                got = len(self._buffer)
                raise IncompleteRead(f"{what}: {got} of {size} bytes before the connection closed")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    # -- the reply ----------------------------------------------------------------------------

    def _read_response(self, body_limit: int) -> Response:
        budget = _HeaderBudget()
        status_line = self._line(budget.left, "the status line")
        if status_line is None:
            raise RemoteDisconnected("Remote end closed connection without response")
        budget.take(status_line)
        version, status, reason = _status_line(status_line)
        headers = self._header_block(budget, "the headers")
        fields = _Fields(headers)
        connection = fields.tokens("connection")
        will_close = "close" in connection if version == "HTTP/1.1" else "keep-alive" not in connection
        if fields.tokens("content-encoding") - {"identity"}:
            raise MalformedReply(f"unsupported Content-Encoding {fields.joined('content-encoding')!r}")
        length = fields.content_length()
        transfer = fields.tokens("transfer-encoding")
        if status in (204, 304):
            body = b""
        elif transfer:
            if transfer != {"chunked"} or fields.joined("transfer-encoding").lower().strip() != "chunked":
                raise MalformedReply(f"unsupported Transfer-Encoding {fields.joined('transfer-encoding')!r}")
            if length is not None:
                raise MalformedReply("both Transfer-Encoding and Content-Length")
            body = self._chunked(body_limit)
        elif length is not None:
            if length > body_limit:
                raise ReplyTooLarge(f"a body of {length} bytes is over the limit of {body_limit}")
            body = self._exactly(length, "the body")
        else:
            body = self._until_close(body_limit)
            will_close = True
        return Response(status, reason, headers, body, will_close)

    def _header_block(self, budget: _HeaderBudget, what: str) -> tuple[tuple[str, str], ...]:
        headers: list[tuple[str, str]] = []
        while True:
            line = self._line(budget.left, what)
            if line is None:
                raise IncompleteRead(f"the connection closed in the middle of {what}")
            budget.take(line)
            if not line:
                return tuple(headers)
            if len(headers) >= HEADER_LINES:
                raise ReplyTooLarge(f"{what} have more than {HEADER_LINES} lines")
            headers.append(_header(line))

    def _chunked(self, body_limit: int) -> bytes:
        body = bytearray()
        while True:
            line = self._line(CHUNK_LINE_BYTES, "a chunk size")
            if line is None:
                raise IncompleteRead("the connection closed before the last chunk")
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise MalformedReply(f"bad chunk size {size_text[:32]!r}")
            size = int(size_text, 16)
            if size == 0:
                self._header_block(_HeaderBudget(), "the trailers")
                return bytes(body)
            if len(body) + size > body_limit:
                raise ReplyTooLarge(f"a chunked body is over the limit of {body_limit} bytes")
            body += self._exactly(size, "a chunk")
            if self._exactly(2, "a chunk's end") != b"\r\n":
                raise MalformedReply("a chunk does not end with CRLF")

    def _until_close(self, body_limit: int) -> bytes:
        while self._fill():
            if len(self._buffer) > body_limit:
                raise ReplyTooLarge(f"a body without a length is over the limit of {body_limit} bytes")
        body = bytes(self._buffer)
        self._buffer.clear()
        return body


def connect(host: str, port: int, timeout: float) -> Connection:
    """A connection whose every step (this connect included) ends ``timeout`` seconds from now."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    return Connection(sock, deadline)


class _HeaderBudget:
    """Bytes left for a header block (the status line included)."""

    def __init__(self) -> None:
        self.left = HEADER_BYTES

    def take(self, line: bytes) -> None:
        self.left -= len(line) + 2
        if self.left < 0:
            raise ReplyTooLarge(f"the headers are longer than {HEADER_BYTES} bytes")


class _Fields:
    """Header values by lower-cased name."""

    def __init__(self, headers: tuple[tuple[str, str], ...]) -> None:
        self._headers = headers

    def values(self, name: str) -> list[str]:
        return [value for key, value in self._headers if key == name]

    def joined(self, name: str) -> str:
        return ", ".join(self.values(name))

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for value in self.values(name) for t in value.split(",") if t.strip()}

    def content_length(self) -> int | None:
        """None when absent; every value (repeated or in a list) must be the same digits."""
        values = {t.strip() for value in self.values("content-length") for t in value.split(",")}
        if not values:
            return None
        if len(values) > 1:
            raise MalformedReply(f"conflicting Content-Length values {sorted(values)[:4]}")
        (text,) = values
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise MalformedReply(f"bad Content-Length {text[:32]!r}")
        return int(text)


def _status_line(line: bytes) -> tuple[str, int, str]:
    text = line.decode("latin-1")
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit() or code[0] == "0":
        raise MalformedReply(f"bad status line {text[:80]!r}")
    status = int(code)
    if status < 200:
        raise MalformedReply(f"unexpected interim reply {text[:80]!r}")
    return version, status, reason.strip()


_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header(line: bytes) -> tuple[str, str]:
    name, colon, value = line.partition(b":")
    if not colon or not name or not _TOKEN_CHARS.issuperset(name):
        raise MalformedReply(f"bad header line {line[:80]!r}")  # folded lines included
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def _request_bytes(method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
    """The request head and body. Refuses CR, LF or NUL anywhere in the head, as http.client
    does (ValueError): a header must not smuggle another."""
    lines = [f"{method} {target} HTTP/1.1"]
    fields = {"Accept-Encoding": "identity", **headers}
    if body is not None or method in ("POST", "PUT", "PATCH"):
        fields["Content-Length"] = str(len(body or b""))
    for name, value in fields.items():
        lines.append(f"{name}: {value}")
    for line in lines:
        if any(c in line for c in "\r\n\0"):
            raise ValueError(f"invalid character in the request head: {line.split(':', 1)[0]!r}")
    if not method.isalpha() or " " in target or not target.startswith("/"):
        raise ValueError(f"invalid request line for {method} {target[:80]!r}")
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + (body or b"")
