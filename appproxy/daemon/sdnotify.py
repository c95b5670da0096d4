"""
A minimal C{sd_notify}: tell systemd (C{Type=notify}) that the daemon is
ready, reloading or stopping, as synapse does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]


def notify(state: bytes, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} (for example C{b"READY=1"}, C{b"RELOADING=1"},
    C{b"STOPPING=1"}) as one datagram to C{$NOTIFY_SOCKET}.

    Never raises on socket errors; it is safe to call from the reactor thread
    (the datagram is tiny and the socket non-blocking).

    @param environ: the environment to read C{NOTIFY_SOCKET} from;
        L{os.environ} by default.
    @return: L{True} if the datagram was sent, L{False} if C{NOTIFY_SOCKET} is
        unset (not running under systemd) or sending failed.
    """
    if environ is None:
        environ = os.environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        # Abstract namespace socket.
        address = "\0" + address[1:]
    elif address[0] != "/":
        # systemd also supports vsock addresses; we do not.
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state, address)
    except (OSError, ValueError):
        # ValueError: an address Python cannot encode (say, an embedded NUL).
        return False
    return True
