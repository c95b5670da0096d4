"""
One request to an internal app and its response (L{BackendResponse}), as
the tunnel stream reads it: like twisted.web's C{IResponse} (C{code},
C{headers}, C{length}, C{deliverBody}), and the callbacks of its llhttp
parser (C{httptools}), which feed the response's reader directly: the head
fires the request's Deferred, each body chunk is one C{dataReceived}, the
end one C{connectionLost}.  The response is its body's transport: pausing
it pauses the backend connection (L{appproxy.connector.http1}).

On top of llhttp's strict checks: only HTTP/1.0 and HTTP/1.1, only the
C{chunked} transfer coding, no unasked-for C{101}; a response to C{HEAD}
ends with its head.  A bare LF ends a line in a head only: once a chunked
response's head is read, llhttp's leniency for it is turned off, its
framing and trailer fields need CRLF (as twisted.web's client did).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

if TYPE_CHECKING:
    from appproxy.connector.http1 import BackendConnection, LengthBody
    from appproxy.connector.pool import OriginPool

#: States of a L{BackendResponse}.
HEAD, BODY, DONE = 0, 1, 2

DONE_REASON = Failure(ResponseDone("Response body fully received"))


class _Stop(Exception):
    """
    Stops llhttp: the head of a response to C{HEAD} is all (C{head_ended}),
    or the response is refused (C{problem}).  The response notes which: an
    exception raised in a callback may reach C{feed_data}'s caller with
    another context.
    """


class BackendResponse:
    """
    One request to an internal app and its response, like twisted.web's
    C{IResponse}: C{code}, C{headers}, C{length}, L{deliverBody}.

    @ivar fields: the response's header fields, names lowercased, in order.
    @ivar connection: the lowercased tokens of its C{Connection} header.
    """

    # What most exchanges never change: class defaults, not stores per request.
    code = 0
    connection: frozenset[bytes] = frozenset()
    length: int | Any = UNKNOWN_LENGTH
    version = (1, 1)
    chunked = False
    keep = False
    retried = False
    conn: BackendConnection | None = None
    connecting: Deferred[Any] | None = None
    protocol: Any = None
    ended: Failure | None = None
    paused = False
    consumer: LengthBody | None = None
    rewritten = False
    head_ended = False
    problem = ""
    head_lengths: list[tuple[bytes, bytes]] | None = None
    """A response to C{HEAD}: its C{Content-Length} fields as sent, kept
    from llhttp (it would check them as the framing of a body)."""

    def __init__(self, pool: OriginPool, method: bytes, head: bytes, body: Any) -> None:
        self.pool = pool
        self.method = method
        self.request_head = head
        self.body = body
        self.deferred: Deferred[BackendResponse] = Deferred(self._cancel)
        self.state = HEAD
        self.fields: list[tuple[bytes, bytes]] = []
        self.sent = body is None
        self.heads = 0
        self.pending: list[bytes] = []

    @property
    def headers(self) -> Headers:
        headers = Headers()
        for name, value in self.fields:
            headers.addRawHeader(name, value)
        return headers

    # -- llhttp's callbacks ----------------------------------------------------

    def _refuse(self, problem: str) -> NoReturn:
        self.problem = problem
        raise _Stop(problem)

    def on_message_begin(self) -> None:
        if self.state == DONE:
            self._refuse("data after the response")
        self.heads += 1
        self.fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp leaves trailing whitespace in the value (RFC 9112 5: not
        # part of it).
        self.fields.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        parser = conn.parser
        code = parser.get_status_code()
        if code < 200:
            if code == 101:
                self._refuse("101 Switching Protocols, unasked")
            return  # 1xx: the answer follows
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._refuse(f"version HTTP/{version}")
        self.code = code
        keep = version == "1.1" and parser.should_keep_alive()
        length: Any = UNKNOWN_LENGTH
        for name, value in self.fields:
            if name == b"content-length":
                length = int(value)  # llhttp checked it: digits, only one
            elif name == b"transfer-encoding":
                if self.chunked or value.strip(b" \t").lower() != b"chunked":
                    self._refuse(f"Transfer-Encoding {value!r}")
                self.chunked = True
            elif name == b"connection":
                self.connection = self.connection | {
                    t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")
                }
        if self.chunked:
            parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=False)
        if self.head_lengths:
            # Parsed with a length of 0 for llhttp: the lengths sent go on.
            fields = [f for f in self.fields if f[0] != b"content-length"]
            self.fields = fields + self.head_lengths
        if version == "1.0":
            self.version = (1, 0)
        head_only = self.method == b"HEAD"
        if head_only or code == 204 or code == 304:
            length = 0
        self.length = length
        self.keep = keep
        self.state = BODY
        if not head_only:
            conn.head = None
        self.connecting = None
        self.deferred.callback(self)
        if head_only:
            self.head_ended = True
            raise _Stop()

    def on_body(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is not None:
            protocol.dataReceived(data)
        elif self.state == BODY:
            self.pending.append(data)

    def on_message_complete(self) -> None:
        if self.state == BODY:
            self._complete()

    # -- the end -----------------------------------------------------------------

    def _complete(self) -> None:
        """The whole response is here: release the connection, then tell the reader."""
        self.state = DONE
        conn = self.conn
        if conn is not None:
            conn.release(self)
        self._end(DONE_REASON)

    def _end(self, reason: Failure) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)
        else:
            self.ended = reason

    def _fail(self, reason: Failure, received: bool) -> None:
        """The connection failed or was lost, or the response was refused."""
        state, self.state = self.state, DONE
        if state == HEAD:
            if not self.deferred.called:
                kind = ResponseFailed if received else ResponseNeverReceived
                self.deferred.errback(Failure(kind([reason])))
        elif state == BODY:
            self._end(Failure(ResponseFailed([reason])))

    def lost(self, reason: Failure, received: bool) -> None:
        """The backend connection closed under this exchange."""
        if self.state == HEAD and not received and self.retryable():
            self.retried = True
            self.conn = None
            self.pool.connect(self)
            return
        if self.state == BODY and not self.chunked and self.length is UNKNOWN_LENGTH:
            # Up to the end of the connection: this is its end.
            self.state = DONE
            self._end(Failure(PotentialDataLoss()))
            return
        self._fail(reason, received)

    def retryable(self) -> bool:
        """Sent again once, if the pooled connection closed before any answer."""
        conn = self.conn
        return (
            conn is not None
            and conn.reused
            and not self.retried
            and self.body is None
            and self.method in (b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE")
        )

    def _cancel(self, _d: Deferred[Any]) -> None:
        """The request was cancelled (its timeout): drop its connection."""
        self.state = DONE
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        conn = self.conn
        if conn is not None:
            conn.abort()

    # -- the body's reader and its transport ------------------------------------

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.makeConnection(self)
        pending, self.pending = self.pending, []
        for data in pending:
            protocol.dataReceived(data)
        if self.ended is not None:
            protocol.connectionLost(self.ended)
        else:
            self.protocol = protocol

    def pauseProducing(self) -> None:
        conn = self.conn
        if conn is not None and self.state == BODY and not self.paused:
            self.paused = True
            conn.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        conn = self.conn
        if conn is not None and self.paused:
            self.paused = False
            conn.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        """The reader wants no more: the connection is dropped, not pooled."""
        if self.state != BODY:
            return
        self.state = DONE
        if self.conn is not None:
            self.conn.abort()
        self._end(Failure(ResponseFailed([Failure(ConnectionError("body not read"))])))
