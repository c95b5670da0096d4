"""
One persistent HTTP/1.1 connection to an internal app (L{BackendConnection}):
a request's head in one write, its body streamed from its producer, the
response fed to its exchange's llhttp parser (L{appproxy.connector.exchange}),
then the connection back to its pool (L{appproxy.connector.pool}) or closed.

llhttp (C{httptools}) runs in its strict mode with one lenient flag, in
a head only: a bare LF ends a status line or a header field, as RFC 9112
section 2.2 lets a recipient read it and as twisted.web's client did (old
CGI scripts, hand-written servers send it); a chunked body's framing and
its trailer fields still need CRLF (L{appproxy.connector.exchange} turns the
flag off once the head is read).  A bare CR, a malformed status line, header
field or length, a duplicate C{Content-Length} or one beside
C{Transfer-Encoding}, a bad chunk are refused.  An obs-fold in a response's
head is unfolded (RFC 9112 section 5.2), as twisted.web's client did: the
head is parsed again, each fold replaced by a space.

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
)
from appproxy.http.length import parse_content_length
from appproxy.tunnel.outbound import hold_writes, release_writes

if TYPE_CHECKING:
    from appproxy.connector.pool import OriginPool

#: The most a response's head (with any 1xx heads before it) may take.
MAX_HEAD = 65536
# A line ends in CRLF or a bare LF; a head, at its first empty line.
_FOLD = re.compile(rb"\r?\n[ \t]+")
_LINE_END = re.compile(rb"\r?\n")
_HEAD_END = re.compile(rb"\n\r?\n")
#: What llhttp refuses in a head that is parsed again, rewritten.
_REWRITTEN = frozenset(
    {
        "Unexpected whitespace after header value",
        "Invalid character in Content-Length",
        "Duplicate Content-Length",
        "Empty Content-Length",
    }
)


def _head_at(data: bytes, count: int) -> tuple[int, int, int]:
    """
    Where the C{count}th head in C{data} starts (after the empty lines
    llhttp skips before a status line), where its lines end (before the
    line end of its last line) and where it ends (after its empty line);
    the last two -1 while it is not all here.
    """
    start = fields = end = 0
    for _ in range(count):
        start = end
        while data[start : start + 1] in (b"\r", b"\n"):
            start += 1
        found = _HEAD_END.search(data, start)
        if found is None:
            return start, -1, -1
        fields = found.start()
        if data[fields - 1 : fields] == b"\r":
            fields -= 1
        end = found.end()
    return start, fields, end


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
        self.parser = parser = HttpResponseParser(response)
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
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
        head = self.head
        if head is not None and len(head) > MAX_HEAD and self.response is response:
            # Still no end to the head (or to its 1xx heads).
            self._malformed(response, f"a response head over {MAX_HEAD} bytes")

    def _refused(self, error: HttpParserError, response: BackendResponse) -> None:
        if response.head_ended:
            response.head_ended = False
            head = self.head or b""
            self.head = None
            if _head_at(head, response.heads)[2] != len(head):
                response.keep = False  # more than the head: not to be trusted
            if response.state == BODY:
                response._complete()
            return
        problem = response.problem
        if (
            response.state == HEAD
            and not problem
            and not response.rewritten
            and str(error) in _REWRITTEN
        ):
            self._rewrite(response)
            return
        self._malformed(response, problem or str(error))

    def _rewrite(self, response: BackendResponse) -> None:
        """
        Parse a head llhttp refused again, once it is all here, with each
        obs-fold (a line end, CRLF or LF, then spaces) replaced by a space,
        its lines ended by CRLF (a bare CR stays, for llhttp to refuse) and
        its C{Content-Length} fields (a list of one number, or the same
        number repeated: RFC 9110 section 8.6) as one; refused when a fold
        starts a head's fields or the lengths are malformed or disagree.  A
        response to C{HEAD} is parsed with a length of 0 instead: its
        lengths are the tunnel stream's to check, as they are.
        """
        head = self.head or b""
        start, fields, end = _head_at(head, response.heads)
        line_end = head.find(b"\n", start)
        if head[line_end + 1 : line_end + 2] in (b" ", b"\t"):
            self._malformed(response, "obs-fold after the status line")
            return
        if end < 0:
            self.parser = _Incomplete(self, response)
            return
        lines = _LINE_END.split(_FOLD.sub(b" ", head[start:fields]))
        kept = [lines[0]]
        lengths = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                lengths.append((b"content-length", value.strip(b" \t")))
            else:
                kept.append(line)
        if lengths and response.method == b"HEAD":
            # llhttp does not frame by it here, but reads keep-alive from it.
            response.head_lengths = lengths
            kept.append(b"Content-Length: 0")
        elif lengths:
            try:
                length = parse_content_length(value for _, value in lengths)
            except ValueError as e:
                self._malformed(response, str(e))
                return
            kept.append(b"Content-Length: %d" % (length or 0))
        response.rewritten = True
        response.heads = 0
        self.parser = parser = HttpResponseParser(response)
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.head = data = head[:start] + b"\r\n".join(kept) + b"\r\n\r\n" + head[end:]
        try:
            parser.feed_data(data)
        except HttpParserError as e:
            self._refused(e, response)

    def _malformed(self, response: BackendResponse, reason: str) -> None:
        self.abort()
        response._fail(Failure(ParseError(reason, b"")), True)

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


class _Incomplete:
    """Stands for the parser while a head to parse again is still arriving."""

    def __init__(self, conn: BackendConnection, response: BackendResponse) -> None:
        self.conn = conn
        self.response = response

    def feed_data(self, data: bytes) -> None:
        self.conn._rewrite(self.response)
