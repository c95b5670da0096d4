"""
One user request at the connector: the tunnel stream in, the request to the
internal application out, and the response streamed back.

The request body is streamed to the backend connection as it arrives, and
tunnel DATA acknowledged only as the backend connection takes it; the
response goes back within the service's flow-control window, the backend
connection paused while the window is shut.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
from h2.events import RequestReceived
from h2.exceptions import H2Error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from appproxy.connector.backend import BackendError, classify_failure
from appproxy.http.headers import HOP_BY_HOP
from appproxy.http.length import response_content_length
from appproxy.tunnel.base import TunnelStream
from appproxy.tunnel.fields import UnsendableFields

if TYPE_CHECKING:
    from appproxy.connector.tunnel import ConnectorTunnelProtocol


@implementer(IBodyProducer)
@attrs.define(eq=False)
class StreamBodyProducer:
    """
    The request body as it arrives over the tunnel, fed to the backend
    connection.  Tunnel DATA is acknowledged (reopening the service's window)
    only once the backend connection has taken it.
    """

    stream: ConnectorStream
    length: int | str
    """The C{content-length}, or C{UNKNOWN_LENGTH}."""
    _consumer: IConsumer | None = attrs.field(init=False, default=None)
    _buffer: deque[tuple[bytes, int]] = attrs.field(init=False, factory=deque)
    """Data (and its flow-controlled length) the backend did not take yet."""
    _paused: bool = attrs.field(init=False, default=False)
    _ended: bool = attrs.field(init=False, default=False)
    _finished: Deferred[None] | None = attrs.field(init=False, default=None)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        finished: Deferred[None] = Deferred()
        self._finished = finished
        # The whole body may be here already, firing finished right away.
        self._drain()
        return finished

    def data(self, data: bytes, flow_length: int) -> None:
        if self._consumer is None or self._paused or self._buffer:
            self._buffer.append((data, flow_length))
            return
        self._consumer.write(data)
        self.stream.acknowledge(flow_length)

    def end(self) -> None:
        self._ended = True
        self._drain()

    def fail(self, reason: str) -> None:
        self._buffer.clear()
        d, self._finished = self._finished, None
        if d is not None:
            d.errback(Failure(ConnectionError(reason)))

    def _drain(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        while self._buffer and not self._paused:
            data, flow_length = self._buffer.popleft()
            consumer.write(data)
            self.stream.acknowledge(flow_length)
        if self._ended and not self._buffer and self._finished is not None:
            d, self._finished = self._finished, None
            d.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        self._buffer.clear()
        self._finished = None
        self.stream.cancel_from_backend()


class ResponseSender(Protocol):
    """
    Receives the backend response body and sends it down the tunnel stream.
    """

    def __init__(self, stream: ConnectorStream) -> None:
        self.stream = stream

    def connectionMade(self) -> None:
        self.stream.response_transport = self.transport

    def dataReceived(self, data: bytes) -> None:
        stream = self.stream
        # Inside the tunnel's error boundary: a failure ends this stream only.
        stream.proto.within_stream(stream.stream_id, stream.send_response_data, data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.stream.response_transport = None
        if reason.check(ResponseDone, PotentialDataLoss):
            self.stream.end_response()
        else:
            self.stream.abort_response()


def _response_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """
    Backend response headers fit for HTTP/2: lowercase, without hop-by-hop
    headers, the ones named in Connection, appproxy's own, or
    C{content-length} (the stream sends the checked length).
    """
    raw = [(name.lower(), value) for name, values in headers.getAllRawHeaders() for value in values]
    named = {
        token.strip().lower()
        for name, value in raw
        if name == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value)
        for name, value in raw
        if name not in HOP_BY_HOP
        and name not in named
        and name != b"content-length"
        and not name.startswith(b"appproxy-")
        and not name.startswith(b":")
    ]


@attrs.define(eq=False)
class ConnectorStream(TunnelStream):
    """
    One user request: tunnel stream in, backend request out.
    """

    proto: ConnectorTunnelProtocol
    body: StreamBodyProducer | None = attrs.field(init=False, default=None)
    """The request body on its way to the backend, if there is one."""
    request_d: Deferred[IResponse] | None = attrs.field(init=False, default=None)
    """The backend request, until it answers."""
    response_transport: Any = attrs.field(init=False, default=None)
    """The backend response body's transport, paused when the tunnel is full."""
    responded: bool = attrs.field(init=False, default=False)
    finished: bool = attrs.field(init=False, default=False)
    url: bytes = attrs.field(init=False, default=b"")
    method: bytes = attrs.field(init=False, default=b"GET")
    request_id: str = attrs.field(init=False, default="-")
    """The service's request id (C{x-request-id}), for the log."""

    def start(self, event: RequestReceived) -> None:
        proto = self.proto
        pseudo: dict[bytes, bytes] = {}
        headers = Headers()
        length: int | str = UNKNOWN_LENGTH
        app_name = b""
        ack = False
        for name, value in event.headers:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"appproxy-app":
                app_name = value
            elif name == b"appproxy-ack":
                ack = True
            elif name.startswith(b"appproxy-"):
                continue
            elif name == b"content-length":
                length = int(value)
            else:
                if name == b"x-request-id":
                    self.request_id = value.decode("latin-1")
                headers.addRawHeader(name, value)
        app = proto.factory.backend.apps.get(app_name.decode("latin-1"))
        if app is None:
            self.fail(
                BackendError(
                    502,
                    "backend-error",
                    f"This connector has no settings for the app {app_name.decode('latin-1')!r}.",
                )
            )
            return
        authority = pseudo.get(b":authority", b"")
        headers.setRawHeaders(b"host", [authority])
        self.url = pseudo.get(b":scheme", b"http") + b"://" + authority + pseudo.get(b":path", b"/")
        self.method = pseudo.get(b":method", b"GET")
        has_body = event.stream_ended is None
        if has_body:
            self.body = StreamBodyProducer(self, length)
        if ack:
            proto.conn.send_headers(
                self.stream_id, [(b":status", b"100"), (b"appproxy-dispatched", b"1")]
            )
            proto.flush()
        d = proto.factory.backend.request(
            app, self.method, self.url, headers, self.body, proto.clock
        )
        self.request_d = d
        d.addCallbacks(self._got_response, self._request_failed, errbackArgs=(app.timeout,))
        # What those raise ends this stream only (the tunnel's error boundary).
        d.addErrback(proto.stream_errback, self.stream_id)

    def _got_response(self, response: IResponse) -> None:
        self.request_d = None
        if self.finished:
            response.deliverBody(Protocol())  # discard; the stream is gone
            return
        headers = [(b":status", b"%d" % response.code)]
        declared = response.headers.getRawHeaders(b"content-length", [])
        try:
            length = response_content_length(
                response.code,
                self.method,
                declared,
                None if response.length is UNKNOWN_LENGTH else response.length,
            )
        except ValueError:
            response.deliverBody(Protocol())  # a HEAD response: nothing to read
            url = self.url.decode("latin-1")
            self.fail(
                BackendError(502, "backend-error", f"{url} sent Content-Length {declared!r}.")
            )
            return
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        headers += _response_headers(response.headers)
        try:
            self.proto.conn.send_headers(self.stream_id, headers)
        except H2Error:
            self.abort_response()
            return
        except UnsendableFields:
            # The tunnel's error boundary answers 502; the body is not wanted.
            response.deliverBody(Protocol())
            raise
        self.responded = True
        self.proto.flush()
        response.deliverBody(ResponseSender(self))

    def _request_failed(self, failure: Failure, timeout: float) -> None:
        self.request_d = None
        if self.finished:
            return
        self.proto.log.debug(
            "Backend request to {url} failed: {failure!r} {reasons!r}",
            url=self.url.decode("latin-1"),
            failure=failure.value,
            reasons=[r.value for r in getattr(failure.value, "reasons", [])],
        )
        self.fail(classify_failure(failure, self.url.decode("latin-1"), timeout))

    def fail(self, error: BackendError) -> None:
        # The detail names the internal URL: it goes to the logs (here, and
        # the service's, with the request id), never to the user's page.
        self.proto.log.info(
            "Backend request {rid} failed: {detail}",
            rid=self.request_id,
            detail=error.detail,
            kind=error.kind,
        )
        if self.body is not None:
            self.body.fail(error.detail)
        try:
            self.proto.conn.send_headers(
                self.stream_id,
                [
                    (b":status", b"%d" % error.status),
                    (b"appproxy-error", error.kind.encode("ascii")),
                    (b"appproxy-error-detail", error.detail.encode("latin-1", "replace")),
                ],
                end_stream=True,
            )
        except H2Error:
            pass
        self._finish()
        self.proto.flush()

    # -- request body, from the tunnel -----------------------------------------

    def request_data(self, data: bytes, flow_length: int) -> None:
        if self.body is None or self.finished:
            self.proto.acknowledge(self.stream_id, flow_length)
            return
        self.body.data(data, flow_length)

    def request_ended(self) -> None:
        if self.body is not None:
            self.body.end()

    def acknowledge(self, flow_length: int) -> None:
        if not self.finished:
            self.proto.acknowledge(self.stream_id, flow_length)

    def cancel_from_backend(self) -> None:
        """
        The backend connection stopped taking the body (it failed or answered
        early); nothing more to do here, the response path reports it.
        """

    # -- response body, to the tunnel ------------------------------------------

    def send_response_data(self, data: bytes) -> None:
        if self.finished:
            return
        if not self.proto.send_data(self, data) and self.response_transport is not None:
            self.response_transport.pauseProducing()

    def outbound_drained(self) -> None:
        if self.response_transport is not None:
            self.response_transport.resumeProducing()

    def end_response(self) -> None:
        if self.finished:
            return
        self.proto.end_stream(self)

    def stream_send_closed(self) -> None:
        self._finish()

    def abort_response(self) -> None:
        if self.finished:
            return
        self._finish()
        self.proto.reset_stream(self.stream_id)

    # -- teardown ----------------------------------------------------------------

    def stream_aborted(self, reason: str) -> None:
        """
        The service reset the stream (the user left) or the tunnel dropped:
        stop the backend request.
        """
        if self.finished:
            return
        self._finish()
        if self.body is not None:
            self.body.fail(reason)
        if self.request_d is not None:
            d, self.request_d = self.request_d, None
            d.cancel()
        if self.response_transport is not None:
            self.response_transport.stopProducing()

    def _finish(self) -> None:
        self.finished = True
        self.closed = True
        self.proto.stream_finished(self)
