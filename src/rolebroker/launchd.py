"""launchd socket activation on macOS: the sockets of the plist's ``Sockets`` entry.

``launch_activate_socket(3)`` from libSystem, through ctypes so that nothing native is
needed. Not exercised by the test suite (no macOS here); on any other platform, or when the
process was not started by launchd, it returns [].
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import socket
import sys

log = logging.getLogger("rolebroker.launchd")

SOCKETS_KEY = "Listeners"
"""The name under ``Sockets`` in launchd/dev.rolebroker.plist."""


def activated_sockets(name: str = SOCKETS_KEY) -> list[socket.socket]:
    if sys.platform != "darwin":
        return []
    path = ctypes.util.find_library("System") or "/usr/lib/libSystem.B.dylib"
    libsystem = ctypes.CDLL(path, use_errno=True)
    activate = libsystem.launch_activate_socket
    activate.argtypes = [
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    activate.restype = ctypes.c_int
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    result = activate(name.encode(), ctypes.byref(fds), ctypes.byref(count))
    if result != 0:
        # ESRCH: not managed by launchd; ENOENT: no such Sockets entry. Both mean "bind yourself".
        if result not in (errno.ESRCH, errno.ENOENT):
            log.warning("launch_activate_socket(%s) failed: %s", name, errno.errorcode.get(result, result))
        return []
    try:
        return [socket.socket(fileno=fds[i]) for i in range(count.value)]
    finally:
        libsystem.free.argtypes = [ctypes.c_void_p]
        libsystem.free(fds)
