"""
The public listener's HTTP/2 connection: twisted.web's, with a bound on
empty DATA frames.

A DATA frame with no payload and no padding passes every flow-control window
(it counts for nothing) and costs its sender nine bytes, but each one is an
event for the server to handle: the "empty frames" flood of CVE-2019-9518.
twisted.web's L{H2Connection} bounds stream resets (Rapid Reset) and buffered
control frames; L{GuardedH2Connection} adds the same kind of token bucket for
DATA frames without payload that do not end their stream, and answers a
flood with GOAWAY C{ENHANCE_YOUR_CALM} and a closed connection, as Twisted's
reset-flood guard does.

It also closes a TLS connection it ends (a protocol error, a reset flood, an
empty-frame flood) at once: twisted.web's sends GOAWAY but, being the TLS
transport's producer, leaves the connection open until the idle timeout.

L{appproxy.frontend.channels.ProxyChannelProtocol} makes the public
listener's HTTP/2 connections guarded ones.
"""

from __future__ import annotations

from typing import Any

import h2.errors
import h2.events
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection

from appproxy.frontend.peer import peer_text

__all__ = ["EMPTY_DATA_BURST", "EMPTY_DATA_RATE", "GuardedH2Connection"]

#: Empty DATA frames (not ending their stream) a connection may send at once.
EMPTY_DATA_BURST = 100
#: ... and per second after that.
EMPTY_DATA_RATE = 10.0

log = Logger()


class GuardedH2Connection(H2Connection):
    """
    twisted.web's HTTP/2 server connection, with a token bucket for DATA
    frames that carry no payload and do not end their stream.

    Only made by L{appproxy.frontend.channels.ProxyChannelProtocol}, which
    turns twisted.web's freshly made connection into one (so it has no
    C{__init__} of its own: L{start_guard} sets its state up).
    """

    _empty_tokens: float
    _empty_tokens_at: float
    _flooded: bool

    def start_guard(self) -> None:
        self._empty_tokens = float(EMPTY_DATA_BURST)
        self._empty_tokens_at = self._reactor.seconds()
        self._flooded = False

    def dataReceived(self, data: bytes) -> None:
        if self._flooded:
            return
        super().dataReceived(data)
        if self._flooded:
            # Close only once the whole batch of events is handled: the
            # connection's event loop goes on after a handler returns.
            log.warn("Empty DATA frame flood from {peer}: GOAWAY", peer=peer_text(self.transport))
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._terminate(Failure(ConnectionLost("Empty DATA frame flood")))

    def timeoutConnection(self) -> None:
        # twisted.web's, logging the client as host:port, not an object's repr.
        log.info("Timing out HTTP/2 client {peer}", peer=peer_text(self.transport))
        streams = self.conn.open_outbound_streams + self.conn.open_inbound_streams
        codes = h2.errors.ErrorCodes
        self.conn.close_connection(error_code=codes.PROTOCOL_ERROR if streams else codes.NO_ERROR)
        transport: Any = self.transport
        transport.write(self.conn.data_to_send())
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        transport.loseConnection()

    def forceAbortClient(self) -> None:
        log.info("Forcibly timing out HTTP/2 client {peer}", peer=peer_text(self.transport))
        self._abortingCall = None
        transport: Any = self.transport
        transport.abortConnection()

    def _terminate(self, reason: Failure) -> None:
        # A TLS transport closes only once its producer is gone, and this
        # connection is its producer: without this, a connection ended for a
        # protocol error or a flood (twisted.web's reset flood too) would
        # send GOAWAY and then stay open until the idle timeout.
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()
        super()._terminate(reason)

    def _requestDataReceived(self, event: h2.events.DataReceived) -> None:
        if event.data or event.stream_ended is not None:
            super()._requestDataReceived(event)
            return
        if self._flooded:
            return
        now = self._reactor.seconds()
        # A wall clock: never let a step backwards drain the bucket.
        elapsed = max(0.0, now - self._empty_tokens_at)
        self._empty_tokens = min(
            float(EMPTY_DATA_BURST), self._empty_tokens + elapsed * EMPTY_DATA_RATE
        )
        self._empty_tokens_at = now
        if self._empty_tokens < 1:
            self._flooded = True
            return
        self._empty_tokens -= 1
        if event.flow_controlled_length:
            # Padding only: it used window, which the stream gives back.
            super()._requestDataReceived(event)
