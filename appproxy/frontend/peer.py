"""
How the public listener's log lines name a client: C{host:port}
(C{[host]:port} for IPv6), not the repr of Twisted's address object.
"""

from __future__ import annotations

from typing import Any

__all__ = ["address_text", "peer_text"]


def address_text(address: object) -> str:
    """C{address} (an C{IAddress}) as C{host:port}; C{-} when it has no host."""
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", None)
        return str(name) if name else "-"
    port = getattr(address, "port", None)
    shown = f"[{host}]" if ":" in str(host) else str(host)
    return shown if port is None else f"{shown}:{port}"


def peer_text(transport: Any) -> str:
    """The peer of C{transport} (maybe L{None}) as L{address_text} shows it."""
    if transport is None:
        return "-"
    try:
        return address_text(transport.getPeer())
    except Exception:
        return "-"
