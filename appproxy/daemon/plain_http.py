"""
Plain HTTP on the HTTPS port: an answer instead of an empty reply.

A browser or C{curl} sent to C{http://host:443/} starts with a request line
("GET / HTTP/1.1"), not a TLS ClientHello, and a TLS listener just drops the
connection: the user sees "empty reply from server".  L{HTTPSOnlyFactory}
wraps the public listener's TLS factory and looks at the first byte of each
connection, as nginx does for its C{497} answer:

  - C{0x16} (a TLS handshake record) or anything else that is not an
    upper-case letter: the connection is the TLS factory's, every byte
    passed on unchanged;
  - an upper-case letter (the first of an HTTP method): the header block is
    read (at most L{HEADER_LIMIT} bytes, for at most L{HEADER_TIMEOUT}
    seconds) and discarded, then a fixed C{400 Bad Request} with a short
    text body is sent and the connection closed.  Nothing the client sent
    is parsed or reflected.

TLS records always begin with a content type from 20 to 24, never with a
letter, so no TLS client is ever refused.

Each connection counts against its address's bound on connections reading a
header block (L{appproxy.frontend.deadlines.ClientDeadlines}) from the TCP
accept, not only once TLS starts: a client opening connections that never
send a byte (or never finish the handshake) is held to the same bound, and
one more is closed at once.  The HTTP channel takes the count over when the
connection turns out to be TLS; trusted proxies are exempt.

It also holds the caps on open connections (C{[limits]}
C{connections_per_address}, IPv6 counted per /64, and C{connections_total}:
L{appproxy.http.ratelimit.ConnectionCounts}), from the TCP accept to the
close: one more is closed at once, and counted in
C{appproxy_limit_hits_total}.  Trusted proxies count only in the total.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.frontend.deadlines import ClientDeadlines
from appproxy.frontend.peer import address_text
from appproxy.http.ratelimit import ConnectionCounts, Throttle, connection_key
from appproxy.observe.metrics import LIMIT_HITS

__all__ = [
    "FIRST_BYTE_TIMEOUT",
    "HEADER_LIMIT",
    "HEADER_TIMEOUT",
    "LINGER",
    "PLAIN_HTTP_REPLY",
    "HTTPSOnlyFactory",
]

log = Logger()

#: Seconds a new connection may stay silent before it is closed.
FIRST_BYTE_TIMEOUT = 30.0
#: Seconds a plain HTTP client gets to send its header block.
HEADER_TIMEOUT = 5.0
#: Bytes of a plain HTTP request read (and discarded) before answering.
HEADER_LIMIT = 16384
#: Seconds the connection stays open for reading after the answer (so the
#: client reads it instead of a reset), unless the client closes first.
LINGER = 5.0

_BODY = (
    b"400 Bad Request\n\n"
    b"This address only accepts HTTPS, and the request was sent as plain HTTP.\n"
    b"Open it with https:// instead of http://.\n"
)
#: The whole answer to a plain HTTP request, always the same bytes.
PLAIN_HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_BODY)
) + _BODY

_HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _FirstByte(Protocol):
    """
    One connection until its first byte says what it is; then either the TLS
    protocol's (everything passed on) or a plain HTTP request to refuse.
    """

    def __init__(self, factory: HTTPSOnlyFactory, addr: IAddress | None) -> None:
        self.factory = factory
        self.addr = addr
        self._inner: Any = None
        self._plain = False
        self._plain_read = 0
        self._answered = False
        self._timer: IDelayedCall | None = None
        self._tail = b""
        #: The address counted in the deadlines' bound, while it is.
        self._counted: str | None = None
        #: Counted in the connection caps: under this key (L{None}: the total only).
        self._open: tuple[str | None] | None = None

    def connectionMade(self) -> None:
        if not self._admit() or not self._count():
            return
        self._set_timer(FIRST_BYTE_TIMEOUT, self._give_up)

    def _admit(self) -> bool:
        """Count this connection in the caps; C{False}: past one (closed)."""
        counts = self.factory.connections
        if counts is None or self.transport is None:
            return True
        host = str(getattr(self.transport.getPeer(), "host", "?"))
        deadlines = self.factory.deadlines
        key = None if deadlines is not None and deadlines.exempt(host) else connection_key(host)
        refused = counts.enter(key)
        if refused is None:
            self._open = (key,)
            return True
        LIMIT_HITS.labels(limit=refused).inc()
        if self.factory.refusals.due(f"{refused} {key}", self.factory.clock.seconds()):
            log.info(
                "Closing a connection from {address}: over {limit} (said once a minute)",
                address=host,
                limit=refused,
            )
        self._plain = self._answered = True
        self.transport.abortConnection()  # type: ignore[attr-defined]
        return False

    def _count(self) -> bool:
        """Count this connection for its address; C{False}: it was one too many."""
        deadlines = self.factory.deadlines
        if deadlines is None or self.transport is None:
            return True
        address = str(getattr(self.transport.getPeer(), "host", "?"))
        if deadlines.exempt(address):
            return True
        if not deadlines.enter(address):
            LIMIT_HITS.labels(limit="client_header_connections_per_address").inc()
            log.info(
                "Closing a connection from {address}: it already has {n} reading headers",
                address=address,
                n=deadlines.limits.header_connections_per_address,
            )
            # Whatever it still sends is discarded.
            self._plain = self._answered = True
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return False
        self._counted = address
        return True

    def _uncount(self) -> None:
        if self._counted is not None and self.factory.deadlines is not None:
            self.factory.deadlines.leave(self._counted)
        self._counted = None

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
        elif self._plain:
            self._plain_data(data)
        elif data:
            if data[0] in _HTTP_METHOD_START:
                self._plain = True
                self._set_timer(HEADER_TIMEOUT, self._answer)
                self._plain_data(data)
            else:
                self._hand_to_tls(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._cancel_timer()
        self._uncount()
        if self._open is not None and self.factory.connections is not None:
            self.factory.connections.leave(self._open[0])
        self._open = None
        if self._inner is not None:
            inner, self._inner = self._inner, None
            # Nothing is delivered to the TLS protocol after its connectionLost.
            self.__dict__.pop("dataReceived", None)
            inner.connectionLost(reason)

    # -- TLS -------------------------------------------------------------------

    def _hand_to_tls(self, data: bytes) -> None:
        self._cancel_timer()
        # The HTTP channel counts the connection from here on.
        self._uncount()
        inner = self.factory.wrapped.buildProtocol(self.addr)
        if inner is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._inner = inner
        # From here on the transport's bytes go straight to the TLS protocol:
        # no layer of this wrapper on every chunk read.
        self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        inner.makeConnection(self.transport)
        inner.dataReceived(data)

    # -- plain HTTP --------------------------------------------------------------

    def _plain_data(self, data: bytes) -> None:
        if self._answered:
            return  # lingering: discard
        self._plain_read += len(data)
        # Only the last few bytes are kept, to find the end of the headers.
        window = self._tail + data
        self._tail = window[-3:]
        if b"\r\n\r\n" in window or b"\n\n" in window or self._plain_read >= HEADER_LIMIT:
            self._answer()

    def _answer(self) -> None:
        if self._answered or self.transport is None:
            return
        self._answered = True
        log.debug(
            "Plain HTTP request on the HTTPS port from {peer}: answered 400",
            peer=address_text(self.transport.getPeer()),
        )
        self.transport.write(PLAIN_HTTP_REPLY)
        # Close our side once written, keep reading (and discarding) until the
        # client closes or LINGER passes: closing with unread input would
        # reset the connection, and the client could lose the answer.
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is None:
            self.transport.loseConnection()
            return
        lose_write()
        self._set_timer(LINGER, self._give_up)

    # -- timers ------------------------------------------------------------------

    def _give_up(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _set_timer(self, seconds: float, call: Any) -> None:
        self._cancel_timer()
        self._timer = self.factory.clock.callLater(seconds, call)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class HTTPSOnlyFactory(Factory):
    """
    The public listener's factory: TLS connections go to C{wrapped} (a
    C{TLSMemoryBIOFactory}); a plain HTTP request gets a C{400} that says to
    use HTTPS.  C{deadlines}, if given, bounds each address's connections
    from the TCP accept on; C{connections}, if given, caps open connections.
    """

    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        deadlines: ClientDeadlines | None = None,
        connections: ConnectionCounts | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.clock = clock
        #: The bound on connections per address (L{None}: none).
        self.deadlines = deadlines
        #: The caps on open connections (L{None}: none).
        self.connections = connections
        #: When to log a refused connection again.
        self.refusals = Throttle(60.0)

    def startFactory(self) -> None:
        self.wrapped.doStart()

    def stopFactory(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _FirstByte(self, addr)
