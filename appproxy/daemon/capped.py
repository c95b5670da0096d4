"""
The caps on a side listener's open connections (L{capped}): per address
(IPv6 per /64) and in total (L{appproxy.http.ratelimit.ConnectionCounts}),
from the TCP accept to the close; one more is closed at once.  Apart from
L{appproxy.daemon.side_listener} so that a listener whose site is built at
its first connection (L{appproxy.daemon.first_use}) is capped from the start
without importing twisted.web's server.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from appproxy.http.ratelimit import ConnectionCounts, Throttle, connection_key

__all__ = ["MAX_CONNECTIONS", "MAX_PER_ADDRESS", "capped"]

log = Logger()

#: Open connections of one address (IPv6: of one /64).
MAX_PER_ADDRESS: Final = 32
#: Open connections in all.
MAX_CONNECTIONS: Final = 256


class _Capped(WrappingFactory):
    """Closes a connection past the caps at its accept (L{capped})."""

    noisy = False

    def __init__(
        self, wrapped: IProtocolFactory, counts: ConnectionCounts, what: str, clock: IReactorTime
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.counts = counts
        self.what = what
        self._keys: dict[Any, str] = {}
        self.refusals = Throttle(60.0)

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper | None:  # type: ignore[override]
        host = str(getattr(addr, "host", addr))
        key = connection_key(host)
        refused = self.counts.enter(key)
        if refused is not None:
            if self.refusals.due(f"{refused} {key}", self.clock.seconds()):
                log.info(
                    "Closing a connection from {address} to the {what} listener: over"
                    " {limit} (said once a minute)",
                    address=host,
                    what=self.what,
                    limit=refused,
                )
            return None
        protocol: ProtocolWrapper | None = super().buildProtocol(addr)
        if protocol is None:
            self.counts.leave(key)
            return None
        self._keys[protocol] = key
        return protocol

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        key = self._keys.pop(p, None)
        if key is not None:
            self.counts.leave(key)


def capped(
    factory: IProtocolFactory,
    what: str,
    clock: IReactorTime,
    per_address: int = MAX_PER_ADDRESS,
    total: int = MAX_CONNECTIONS,
) -> WrappingFactory:
    """C{factory} behind the caps on open connections (C{what}: for the log)."""
    return _Capped(factory, ConnectionCounts(per_address, total), what, clock)
