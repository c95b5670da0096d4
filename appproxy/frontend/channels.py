"""
The public listener's protocol: twisted.web's HTTP/1.1 or HTTP/2 (by ALPN),
each held to a stricter reading of the protocol than twisted.web's own.

  - L{StrictHTTPChannel} (HTTP/1.1, RFC 9112): at most 100 header lines and
    16 KiB of header block; an over-long line gets a 400 like too many header
    bytes (LineReceiver would just drop the connection); a line folded onto
    the previous one (obs-fold: a line starting with a space or a tab) gets a
    400 and a closed connection instead of being joined, as RFC 9112 section
    5.2 allows a server to do, because other servers read it differently;
    so does a bare LF in the request line or header block (RFC 9112 section
    2.2 lets a server accept one as a line end: this one does not), at once,
    not once a CRLF comes.
  - L{appproxy.frontend.h2_deadlines.DeadlineH2Connection} (HTTP/2): a bound
    on empty DATA frames (L{appproxy.frontend.h2_guard}), the deadlines of
    L{appproxy.frontend.deadlines} for a header block and a request body.

Reading an HTTP/1.1 connection has one owner, L{StrictHTTPChannel}'s
L{InputGate}: twisted.web's channel pauses the transport (its write buffer is
full, or pipelined requests wait) and so does a request whose body the tunnel
cannot take yet (L{StrictHTTPChannel.pause_input}).  Each pauses and resumes
only its own hold; the transport reads again once no hold is left, so one
never undoes the other's pause.

A WebSocket (L{appproxy.frontend.ws_relay}) takes the HTTP/1.1 connection
over once the app accepted it (L{StrictHTTPChannel.upgrade}): the bytes read
from then on, and those the channel had read after the handshake, are the
WebSocket's, and twisted.web's idle timeout no longer runs.

twisted.web picks its HTTP/2 connection class itself once ALPN says h2
(C{_GenericHTTPChannelProtocol.dataReceived}); L{ProxyChannelProtocol} lets
it, then makes the new connection a guarded one before the first byte of
HTTP/2 reaches it.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

from appproxy.frontend.h2_deadlines import DeadlineH2Connection
from appproxy.frontend.peer import peer_text

__all__ = ["InputGate", "ProxyChannelProtocol", "StrictHTTPChannel", "proxy_channel_protocol"]

log = Logger()

#: The holds on an HTTP/1.1 connection's reading.
CHANNEL, REQUEST_BODY = "channel", "request body"


class Upgraded(Protocol):
    """What an HTTP/1.1 connection carries once upgraded (a WebSocket)."""

    def client_data(self, data: bytes) -> None: ...

    def client_lost(self, reason: Failure) -> None: ...


class InputGate:
    """
    The transport's reading as the channel sees it (its C{_networkProducer}):
    paused while anyone holds it.  twisted.web's own pause and resume calls
    are the C{CHANNEL} hold; a request's are the C{REQUEST_BODY} hold.
    """

    #: Who holds it (a new frozenset each change: changes are rare, and an
    #: empty one is shared by all connections; a set costs 216 bytes).
    _holds: frozenset[str] = frozenset()

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    @property
    def paused(self) -> bool:
        return bool(self._holds)

    def hold(self, who: str) -> None:
        if not self._holds:
            self._producer.pauseProducing()
        self._holds = self._holds | {who}

    def release(self, who: str) -> None:
        if who not in self._holds:
            return
        self._holds = self._holds - {who}
        if not self._holds:
            self._producer.resumeProducing()

    # What twisted.web's HTTPChannel calls on its network producer.

    def pauseProducing(self) -> None:
        self.hold(CHANNEL)

    def resumeProducing(self) -> None:
        self.release(CHANNEL)

    def stopProducing(self) -> None:
        self._producer.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer.unregisterProducer()


class StrictHTTPChannel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel, stricter about the header block."""

    maxHeaders = 100
    totalHeadersSize = 16384
    _networkProducer: Any
    #: Once upgraded: what the connection carries (see L{upgrade}).
    upgraded: Upgraded | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._networkProducer = InputGate(self._networkProducer)

    def pause_input(self) -> None:
        """The request cannot take more of its body yet: stop reading."""
        self._networkProducer.hold(REQUEST_BODY)

    def resume_input(self) -> None:
        """The request takes its body again (or has all of it)."""
        self._networkProducer.release(REQUEST_BODY)

    def input_paused(self) -> bool:
        """Whether the service, for any reason, is not reading the connection."""
        gate = getattr(self, "_networkProducer", None)
        return isinstance(gate, InputGate) and gate.paused

    def upgrade(self, upgraded: Upgraded) -> bytes:
        """
        From now on every byte read goes to C{upgraded}, and the connection's
        end too; twisted.web's timeout stops.  The bytes the channel already
        read after the request (held for the next request) are returned: they
        are C{upgraded}'s.
        """
        self.upgraded = upgraded
        self.setTimeout(None)
        self._savedTimeOut = None
        buffered = b"".join(self._dataBuffer) + self._buffer
        self._dataBuffer = []
        self._buffer = b""
        # twisted.web stops reading while it holds much for the next request.
        self._networkProducer.release(CHANNEL)
        return buffered

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.upgraded is not None:
            self.upgraded.client_lost(reason)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.client_data(data)
            return
        super().dataReceived(data)
        # Reading lines and not held: what is left is part of one line (it
        # has no CRLF), and an LF in it is a bare LF, which would otherwise
        # wait for a CRLF that never comes.  (Held, the buffer may hold a
        # pipelined request's body, where an LF is data.)
        if self.line_mode and not self.paused and b"\n" in self._buffer:
            self._buffer = b""
            self._respondToBadRequestAndDisconnect()
            # Nothing more is read from it (nor answered a second time).
            self.dataReceived = lambda data: None  # type: ignore[method-assign]

    def lineReceived(self, line: bytes) -> None:
        # No request line or header line starts with whitespace: in the
        # header block that is obs-fold, which twisted.web would join to
        # the previous line.  Nor has one a bare LF in it: lines end with
        # CRLF only.
        if line[:1] in (b" ", b"\t") or b"\n" in line:
            self._respondToBadRequestAndDisconnect()
            return
        super().lineReceived(line)

    def timeoutConnection(self) -> None:
        # twisted.web's, logging the client as host:port, not an object's repr.
        log.info("Timing out client {peer}", peer=peer_text(self.transport))
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def forceAbortClient(self) -> None:
        log.info("Forcibly timing out client {peer}", peer=peer_text(self.transport))
        self._abortingCall = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


class ProxyChannelProtocol(_GenericHTTPChannelProtocol):
    """
    twisted.web's HTTP/1.1-or-HTTP/2 protocol, whose HTTP/2 connection is a
    L{DeadlineH2Connection}.
    """

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            # Let twisted.web choose (and set up) the channel for what ALPN
            # said, then guard it before it parses anything; the HTTP/1.1
            # channel's deadlines (if any) go on to HTTP/2.
            deadlines = getattr(self._channel, "deadlines", None)
            super().dataReceived(b"")
            channel = self._channel
            if type(channel) is H2Connection:
                channel.__class__ = DeadlineH2Connection
                guarded = cast(DeadlineH2Connection, channel)
                guarded.start_guard(getattr(deadlines, "limits", None))
                guarded.start_deadlines(deadlines)
            super().dataReceived(data)
            # Chosen for good: from now on every chunk goes straight to the
            # channel, without twisted.web's check of the protocol again.
            self.dataReceived = self._to_channel  # type: ignore[method-assign]
            return
        super().dataReceived(data)

    def _to_channel(self, data: bytes) -> None:
        self._channel.dataReceived(data)


def proxy_channel_protocol(factory: object) -> ProxyChannelProtocol:
    """The public listener's protocol (an C{HTTPFactory}'s C{protocol})."""
    return ProxyChannelProtocol(StrictHTTPChannel())
