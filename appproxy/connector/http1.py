"""
One persistent HTTP/1.1 connection to an internal app (L{BackendConnection}):
a request's head in one write, its body streamed from its producer, the
response fed to its exchange's llhttp parser (L{appproxy.connector.exchange}),
then the connection back to its pool (L{appproxy.connector.pool}) or closed.

llhttp (C{httptools}) runs in its strict mode, no lenient flag set: a
malformed status line, header field or length, a bare LF, a duplicate
C{Content-Length} or one beside C{Transfer-Encoding}, a bad chunk are
refused.  An obs-fold in a response's head is unfolded (RFC 9112 section
5.2), as twisted.web's client did: the head is parsed again, each fold
replaced by a space.

Reused only when safe: HTTP/1.1 without C{Connection: close}, the request
body all sent, the response read to its end, nothing after it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpResponseParser
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ParseError

from appproxy.connector.exchange import (
    BODY,
    DONE,
    DONE_REASON,
    HEAD,
    BackendResponse,
    HeadEnd,
)
from appproxy.tunnel.outbound import hold_writes, release_writes

if TYPE_CHECKING:
    from appproxy.connector.pool import OriginPool

_FOLD = re.compile(rb"\r\n[ \t]+")
_HEAD_END = b"\r\n\r\n"


def _nth_head_end(data: bytes, count: int) -> int:
    """Where the C{count}th head in C{data} ends (after its empty line), or -1."""
    end = 0
    for _ in range(count):
        found = data.find(_HEAD_END, end)
        if found < 0:
            return -1
        end = found + 4
    return end


class LengthBody:
    """
    A request body of known length: a producer that writes more than it
    said is cut off with its connection (the rest would be read by the
    backend as another request).
    """

    def __init__(self, conn: BackendConnection, length: int) -> None:
        self.conn = conn
        self.left = length

    def write(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.conn.abort()
        else:
            self.conn.transport.write(data)  # type: ignore[union-attr]

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.conn.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        self.conn.transport.unregisterProducer()  # type: ignore[union-attr]


class _ChunkedBody:
    """A request body of unknown length, written in chunks."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        if data:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()


class BackendConnection(Protocol):
    """One persistent HTTP/1.1 connection to an internal app."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.parser: Any = None
        self.response: BackendResponse | None = None
        self.head: bytes | None = None
        """What came of the current response's head (for C{HEAD} and obs-fold)."""
        self.reused = False
        self.idle_since = 0.0
        self.closed = False
        self.aborted = False
        self.lost_d: list[Deferred[None]] = []

    def send(self, response: BackendResponse) -> None:
        """Write the request; stream its body from its producer."""
        self.response = response
        response.conn = self
        self.parser = HttpResponseParser(response)
        self.head = b""
        transport: Any = self.transport
        transport.write(response.request_head)
        body = response.body
        if body is not None:
            length = body.length
            consumer: Any
            if isinstance(length, int):
                consumer = response.consumer = LengthBody(self, length)
            else:
                consumer = _ChunkedBody(transport)
            transport.registerProducer(body, True)
            finished = body.startProducing(consumer)
            finished.addCallbacks(
                self._body_sent,
                self._body_failed,
                callbackArgs=(response,),
                errbackArgs=(response,),
            )

    def _body_sent(self, _: object, response: BackendResponse) -> None:
        if self.response is not response or self.closed:
            return  # answered already: the connection is going
        consumer = response.consumer
        if consumer is None:
            self.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
        elif consumer.left:
            self.abort()  # shorter than it said
            return
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        response.sent = True

    def _body_failed(self, failure: Failure, response: BackendResponse) -> None:
        if self.response is response and not response.sent:
            self.abort()

    def dataReceived(self, data: bytes) -> None:
        response = self.response
        if response is None or response.state == DONE:
            # Nothing was asked (a backend talking out of turn), or the
            # exchange was cancelled: the connection goes.
            self.abort()
            return
        if self.head is not None:
            self.head += data
        parser = self.parser
        hold_writes()
        try:
            parser.feed_data(data)
        except HttpParserError as e:
            self._refused(e, response)
        finally:
            release_writes()

    def _refused(self, error: HttpParserError, response: BackendResponse) -> None:
        cause = error.__context__
        if isinstance(cause, HeadEnd):
            head = self.head or b""
            self.head = None
            if _nth_head_end(head, response.heads) != len(head):
                response.keep = False  # more than the head: not to be trusted
            if response.state == BODY:
                response._complete()
            return
        if (
            response.state == HEAD
            and cause is None
            and str(error) == "Unexpected whitespace after header value"
        ):
            self._unfold(response)
            return
        self.abort()
        reason = error if cause is None else cause
        response._fail(Failure(ParseError(str(reason), b"")), True)

    def _unfold(self, response: BackendResponse) -> None:
        """
        Parse the head again with each obs-fold (CRLF then spaces) replaced
        by a space, once it is all here; refused when a fold starts a head's
        fields.
        """
        head = self.head or b""
        end = _nth_head_end(head, response.heads)
        start = _nth_head_end(head, response.heads - 1)
        line_end = head.find(b"\r\n", start)
        if head[line_end + 2 : line_end + 3] in (b" ", b"\t"):
            self.abort()
            response._fail(Failure(ParseError("obs-fold after the status line", b"")), True)
            return
        if end < 0:
            self.parser = _Folding(self, response)
            return
        response.heads = 0
        self.parser = parser = HttpResponseParser(response)
        unfolded = head[:start] + _FOLD.sub(b" ", head[start:end])
        data = unfolded + head[end:]
        self.head = data
        try:
            parser.feed_data(data)
        except HttpParserError as e:
            self._refused(e, response)

    def release(self, response: BackendResponse) -> None:
        """The response is all here: pool the connection, or close it."""
        self.response = None
        self.head = None
        transport: Any = self.transport
        if response.paused:
            response.paused = False
            transport.resumeProducing()
        if not response.sent:
            # Answered before the body was sent: the body stops, the
            # connection with it.
            transport.unregisterProducer()
            response.body.stopProducing()
            transport.loseConnection()
        elif response.keep and not self.closed and not self.aborted:
            self.pool.put(self)
        else:
            transport.loseConnection()

    def abort(self) -> None:
        if not self.closed and not self.aborted and self.transport is not None:
            self.aborted = True
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> Deferred[None]:
        """Close this (idle) connection; fires once it is closed."""
        d: Deferred[None] = Deferred()
        if self.closed:
            d.callback(None)
        else:
            self.lost_d.append(d)
            self.transport.loseConnection()  # type: ignore[union-attr]
        return d

    def connectionLost(self, reason: Failure = DONE_REASON) -> None:
        self.closed = True
        self.pool.forget(self)
        response, self.response = self.response, None
        if response is not None:
            received = bool(self.head)
            if not response.sent and response.body is not None:
                response.sent = True
                response.body.stopProducing()
            response.lost(reason, received)
        for d in self.lost_d:
            d.callback(None)
        self.lost_d = []


class _Folding:
    """Stands for the parser while an obs-folded head is still arriving."""

    def __init__(self, conn: BackendConnection, response: BackendResponse) -> None:
        self.conn = conn
        self.response = response

    def feed_data(self, data: bytes) -> None:
        self.conn._unfold(self.response)
