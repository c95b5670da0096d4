"""
The tunnel listener's protocols, chosen by ALPN once the TLS handshake is
done: C{h2} is the tunnel (L{appproxy.tunnel.service}), C{http/1.1} the
enrolment API (L{appproxy.trust.api}); a connection that negotiated neither
is closed.

Wrap L{ListenerFactory} in TLS (L{appproxy.daemon.tls.tunnel_server_context}).
The protocol chosen gets the TLS transport only after the handshake, so the
tunnel's admission check (in its C{handshakeCompleted}) runs before any byte
of HTTP/2 is read or written.

Limits, since anyone may connect: a connection must finish its TLS
handshake within L{HANDSHAKE_TIMEOUT} seconds of the TCP accept, and the
listener holds at most L{MAX_PER_ADDRESS} connections of one address and
L{MAX_CONNECTIONS} in all (a connector keeps at most 64 tunnels plus an
enrolment API call); beyond, new connections are closed at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appproxy.daemon.tls import negotiated_protocol
from appproxy.tunnel.enrolment import ENROLMENT_ALPN

__all__ = ["HANDSHAKE_TIMEOUT", "MAX_CONNECTIONS", "MAX_PER_ADDRESS", "ListenerFactory"]

log = Logger()

#: Bytes held for the chosen protocol before it is chosen (none expected).
_MAX_EARLY = 64 * 1024
#: Seconds from the TCP accept to the end of the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Connections of one address the listener holds at once: a connector keeps
#: at most 64 tunnels and an API call (connectors behind one NAT share it).
MAX_PER_ADDRESS = 128
#: Connections the listener holds at once.
MAX_CONNECTIONS = 4096
#: Seconds between two log lines about connections closed by the limits.
_LOG_INTERVAL = 60.0


@implementer(IHandshakeListener)
class _Dispatch(Protocol):
    """One connection of the tunnel listener, until its protocol is chosen."""

    def __init__(
        self, factory: ListenerFactory, addr: IAddress | None, host: str, over: str | None
    ) -> None:
        self.listener = factory
        self.addr = addr
        self.host = host
        #: Why this connection is over the limits (closed at once), or L{None}.
        self.over = over
        self.chosen: IProtocol | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        # Closed from the reactor, not within the TLS wrapper's makeConnection.
        delay = 0.0 if self.over is not None else self.listener.handshake_timeout
        self._timer = self.listener.clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.over is not None:
            self.listener.refused(self.host, self.over)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def handshakeCompleted(self) -> None:
        if self.over is not None:
            return
        self._stop_timer()
        protocol = negotiated_protocol(self.transport)
        if protocol == b"h2":
            check = self.listener.tunnel_check
            if check is not None and not check(self.transport):
                # No connector certificate: closed before any HTTP/2 byte.
                if self.transport is not None:
                    self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            factory = self.listener.tunnel
        elif protocol == ENROLMENT_ALPN:
            factory = self.listener.enrolment
        else:
            peer = self.transport.getPeer() if self.transport is not None else None
            log.info(
                "Closed a connection from {peer} to the tunnel listener: it negotiated no"
                " protocol the listener speaks (ALPN h2 or http/1.1)",
                peer=str(getattr(peer, "host", peer)),
            )
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        chosen = factory.buildProtocol(self.addr)  # type: ignore[arg-type]
        if chosen is None or self.transport is None:
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.chosen = chosen
        chosen.makeConnection(self.transport)
        if IHandshakeListener.providedBy(chosen):
            chosen.handshakeCompleted()
        early, self._early = self._early, []
        for data in early:
            if self.chosen is not None and self.connected:
                self.chosen.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        if self.chosen is not None:
            self.chosen.dataReceived(data)
            return
        self._early_size += len(data)
        if self._early_size > _MAX_EARLY:
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._early.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.connected = False
        self._stop_timer()
        if self.over is None:
            self.listener.closed(self.host)
        if self.chosen is not None:
            chosen, self.chosen = self.chosen, None
            chosen.connectionLost(reason)


class ListenerFactory(Factory):
    """The tunnel listener's factory: a L{_Dispatch} per connection."""

    noisy = False

    def __init__(
        self,
        tunnel: IProtocolFactory,
        enrolment: IProtocolFactory,
        tunnel_check: Callable[[Any], bool] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param tunnel_check: asked of each C{h2} connection's TLS transport
            before the tunnel gets it: whether it has a connector certificate
            at all (the registry's admission is the tunnel's own check).
        @param clock: the handshake deadlines' (the global reactor if None).
        """
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.tunnel = tunnel
        self.enrolment = enrolment
        self.tunnel_check = tunnel_check
        self.clock = clock
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.max_per_address = MAX_PER_ADDRESS
        self.max_connections = MAX_CONNECTIONS
        #: Open connections per address (those within the limits).
        self.open: Counter[str] = Counter()
        self._refused = 0
        self._logged_at: float | None = None

    def buildProtocol(self, addr: IAddress | None) -> _Dispatch:
        host = str(getattr(addr, "host", addr))
        over: str | None = None
        if self.open.total() >= self.max_connections:
            over = f"the listener holds {self.max_connections} connections already"
        elif self.open[host] >= self.max_per_address:
            over = f"{host} has {self.max_per_address} connections open already"
        else:
            self.open[host] += 1
        return _Dispatch(self, addr, host, over)

    def closed(self, host: str) -> None:
        """A connection within the limits is gone."""
        self.open[host] -= 1
        if self.open[host] <= 0:
            del self.open[host]

    def refused(self, host: str, why: str) -> None:
        """A connection over the limits was closed: logged at most once a minute."""
        self._refused += 1
        now = self.clock.seconds()
        if self._logged_at is not None and now - self._logged_at < _LOG_INTERVAL:
            return
        self._logged_at = now
        count, self._refused = self._refused, 0
        log.warn(
            "Closed {count} new connection(s) to the tunnel listener at once: {why}"
            " (at most {per_address} per address, {total} in all)",
            count=count,
            why=why,
            per_address=self.max_per_address,
            total=self.max_connections,
        )

    def startFactory(self) -> None:
        for factory in (self.tunnel, self.enrolment):
            factory.doStart()

    def stopFactory(self) -> None:
        for factory in (self.tunnel, self.enrolment):
            factory.doStop()
