"""
The two bodies of one user request at the connector: the request body as it
arrives over the tunnel, fed to the backend connection
(L{StreamBodyProducer}), and the backend's response body, sent down the
tunnel stream (L{ResponseSender}).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from appproxy.connector.request import ConnectorStream


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
        self.stream.upload_started()
        # The whole body may be here already, firing finished right away.
        self._drain()
        return finished

    def data(self, data: bytes, flow_length: int) -> None:
        if self._consumer is None or self._paused or self._buffer:
            self._buffer.append((data, flow_length))
            # Bytes wait for the backend: its idle clock runs.
            self.stream.body_queued()
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
        if self._buffer:
            self.stream.body_queued()
        elif self._ended and self._finished is not None:
            d, self._finished = self._finished, None
            d.callback(None)
            self.stream.body_delivered()

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
        # Inside the tunnel's error boundary (TunnelProtocol.within_stream,
        # inlined: this runs per chunk): a failure ends this stream only.
        try:
            stream.send_response_data(data)
        except Exception:
            stream.proto.stream_error(stream.stream_id, Failure())

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.stream.response_transport = None
        # Failure.check's work (the class names of the error's bases, made
        # and compared per call) for what isinstance says at once.
        if isinstance(reason.value, ResponseDone | PotentialDataLoss):
            self.stream.end_response()
        else:
            self.stream.abort_response()
