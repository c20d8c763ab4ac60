"""The HTTP Date header, formatted at most once a second.

uvicorn keeps it fresh with a timer that wakes the daemon ten times a second; the daemon
turns that off (daemon.py) and the Guard (server.py) stamps each response from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate

from starlette.types import Message, Send


class HttpDate:
    """``Date`` as bytes, reformatted only when the second changes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        second = int(self._clock())
        if second != self._second:
            self._second, self._value = second, formatdate(second, usegmt=True).encode()
        return self._value


def dated(send: Send, date: Callable[[], bytes]) -> Send:
    """``send`` with a Date header added to the response start (uvicorn's own is off)."""

    async def with_date(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [(b"date", date()), *message.get("headers", ())]
        await send(message)

    return with_date
