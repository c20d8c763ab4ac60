"""A DNS responder that resolves every name to loopback."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.support.netns.constants import LOOPBACK


def dns_answer(query: bytes, address: str = LOOPBACK) -> bytes | None:
    """The reply to one DNS query: every A record is ``address``; anything else gets an
    empty NOERROR (so AAAA lookups fall back to IPv4 at once). None for garbage."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        end += 1 + query[end]
    end += 1
    if end + 4 > len(query):
        return None
    question = query[12 : end + 4]
    qtype, qclass = struct.unpack("!HH", query[end : end + 4])
    answers = b""
    if qtype == 1 and qclass == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080  # QR, opcode+RD, AA, RA
    header = struct.pack("!HHHHHH", ident, reply_flags, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def dns_name(query: bytes) -> str:
    """The question name of a query, for the log of what the client looked up."""
    labels: list[str] = []
    pos = 12
    while pos < len(query) and query[pos] != 0:
        size = query[pos]
        labels.append(query[pos + 1 : pos + 1 + size].decode("ascii", "replace"))
        pos += 1 + size
    return ".".join(labels).lower()


class DnsResponder:
    """A UDP DNS server that resolves every name to loopback, so real AWS host names lead
    to the TLS terminator. Stdlib only; one thread; records the names it was asked."""

    def __init__(self, host: str = LOOPBACK, port: int = 53) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)

    def start(self) -> DnsResponder:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = dns_answer(query)
            if reply is not None:
                self.names.add(dns_name(query))
                with contextlib.suppress(OSError):
                    self._sock.sendto(reply, peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
