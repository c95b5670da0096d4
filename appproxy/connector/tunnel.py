"""
The connector's end of the tunnel: an HTTP/2 I{server} on a connection the
connector dialled out.

Each stream the service opens is one user request: the connector sends it to
the internal application (streaming the body as it arrives, and acknowledging
tunnel DATA only as the backend connection takes it) and streams the response
back within the service's flow-control window, pausing the backend connection
when the window is shut.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from appproxy.connector.backend import BackendClient, BackendError, classify_failure, parse_settings
from appproxy.http.headers import HOP_BY_HOP
from appproxy.tunnel.base import TunnelProtocol, TunnelStream

CONFIG_PATH = b"/.appproxy/config"
#: Largest settings document accepted from the service.
MAX_SETTINGS_SIZE = 1 << 20


@implementer(IBodyProducer)
class StreamBodyProducer:
    """
    The request body as it arrives over the tunnel, fed to the backend
    connection.  Tunnel DATA is acknowledged (reopening the service's window)
    only once the backend connection has taken it.
    """

    def __init__(self, stream: ConnectorStream, length: int | str) -> None:
        self.stream = stream
        self.length = length
        self._consumer: IConsumer | None = None
        self._buffer: deque[tuple[bytes, int]] = deque()
        self._paused = False
        self._ended = False
        self._finished: Deferred[None] | None = None

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
        self.stream.send_response_data(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.stream.response_transport = None
        if reason.check(ResponseDone, PotentialDataLoss):
            self.stream.end_response()
        else:
            self.stream.abort_response()


def _response_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """
    Backend response headers fit for HTTP/2: lowercase, without hop-by-hop
    headers, the ones named in Connection, or appproxy's own.
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
        and not name.startswith(b"appproxy-")
        and not name.startswith(b":")
    ]


class ConnectorStream(TunnelStream):
    """
    One user request: tunnel stream in, backend request out.
    """

    def __init__(self, proto: ConnectorTunnelProtocol, stream_id: int) -> None:
        super().__init__(stream_id)
        self.proto = proto
        self.body: StreamBodyProducer | None = None
        self.request_d: Deferred[IResponse] | None = None
        self.response_transport: Any = None
        self.responded = False
        self.finished = False
        self.url = b""

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
                headers.addRawHeader(name, value)
        app = proto.backend.apps.get(app_name.decode("latin-1"))
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
        has_body = event.stream_ended is None
        if has_body:
            self.body = StreamBodyProducer(self, length)
        if ack:
            proto.conn.send_headers(
                self.stream_id, [(b":status", b"100"), (b"appproxy-dispatched", b"1")]
            )
            proto.flush()
        d = proto.backend.request(
            app, pseudo.get(b":method", b"GET"), self.url, headers, self.body, proto.clock
        )
        self.request_d = d
        d.addCallbacks(self._got_response, self._request_failed, errbackArgs=(app.timeout,))

    def _got_response(self, response: IResponse) -> None:
        self.request_d = None
        if self.finished:
            response.deliverBody(Protocol())  # discard; the stream is gone
            return
        headers = [(b":status", b"%d" % response.code), *_response_headers(response.headers)]
        try:
            self.proto.conn.send_headers(self.stream_id, headers)
        except H2Error:
            self.abort_response()
            return
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
        self.proto.log.info(
            "Backend request failed: {detail}", detail=error.detail, kind=error.kind
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


class _SettingsStream(TunnelStream):
    def __init__(self, proto: ConnectorTunnelProtocol, stream_id: int) -> None:
        super().__init__(stream_id)
        self.proto = proto
        self.chunks: list[bytes] = []
        self.size = 0

    def request_data(self, data: bytes, flow_length: int) -> None:
        self.size += len(data)
        if self.size <= MAX_SETTINGS_SIZE:
            self.chunks.append(data)
        self.proto.acknowledge(self.stream_id, flow_length)

    def request_ended(self) -> None:
        proto = self.proto
        status = b"204"
        try:
            if self.size > MAX_SETTINGS_SIZE:
                raise ValueError("settings document too large")
            proto.backend.configure(parse_settings(json.loads(b"".join(self.chunks))))
            proto.log.info(
                "Settings received for apps: {apps}", apps=", ".join(sorted(proto.backend.apps))
            )
        except ValueError as e:
            proto.log.error("Refusing the service's settings: {error}", error=str(e))
            status = b"400"
        proto.streams.pop(self.stream_id, None)
        proto.conn.send_headers(self.stream_id, [(b":status", status)], end_stream=True)
        proto.flush()


class ConnectorTunnelProtocol(TunnelProtocol):
    """
    The connector's end of one tunnel connection.
    """

    client_side = False

    def __init__(
        self,
        clock: IReactorTime,
        backend: BackendClient,
        capacity: int,
        ping_interval: float,
        factory: ConnectorTunnelFactory,
    ) -> None:
        super().__init__(clock, ping_interval)
        self.backend = backend
        self.capacity = capacity
        self.factory = factory
        self._drained: Deferred[None] | None = None

    def local_settings(self) -> dict[int, int]:
        settings = super().local_settings()
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = self.capacity
        return settings

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.protocols.add(self)
        if self.factory.draining:
            self.drain()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.factory.protocols.discard(self)
        super().connectionLost(reason)
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def request_received(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self._drained is not None:
            # Opened before the service saw our capacity drop to 0: refused,
            # so the service knows it is safe to retry elsewhere.
            self.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        path = dict(event.headers).get(b":path")
        stream: ConnectorStream | _SettingsStream
        if path == CONFIG_PATH:
            stream = _SettingsStream(self, sid)
            self.streams[sid] = stream
            if event.stream_ended is not None:
                stream.request_ended()
            return
        stream = ConnectorStream(self, sid)
        self.streams[sid] = stream
        self.factory.streams_started += 1
        stream.start(event)

    def data_received(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if isinstance(stream, ConnectorStream | _SettingsStream):
            stream.request_data(event.data, event.flow_controlled_length)
        else:
            self.acknowledge(event.stream_id, event.flow_controlled_length)

    def stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if isinstance(stream, ConnectorStream):
            stream.request_ended()
        elif isinstance(stream, _SettingsStream):
            stream.request_ended()

    def stream_send_closed(self, stream: TunnelStream) -> None:
        if isinstance(stream, ConnectorStream):
            stream.stream_send_closed()

    def stream_finished(self, stream: ConnectorStream) -> None:
        self.streams.pop(stream.stream_id, None)
        if self._drained is not None and not self._busy():
            self._close()

    def _busy(self) -> bool:
        return any(isinstance(s, ConnectorStream) and not s.finished for s in self.streams.values())

    def drain(self) -> Deferred[None]:
        """
        Stop taking requests, let those in flight finish, then close.

        The connector advertises C{SETTINGS_MAX_CONCURRENT_STREAMS = 0} so the
        service sends nothing new, and says GOAWAY only once idle: h2 treats
        a connection as closed, for both ends, as soon as GOAWAY is sent.
        """
        if not self.connected:
            return succeed(None)
        if self._drained is None:
            self._drained = Deferred()
            self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 0})
            self.flush()
            if not self._busy():
                self._close()
        return self._drained

    def _close(self) -> None:
        try:
            self.conn.close_connection()
        except H2Error:
            pass
        self.flush()
        if self.transport is not None:
            self.transport.loseConnection()


class ConnectorTunnelFactory(Factory):
    """
    Builds tunnel protocols for the connector's connections.
    """

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        backend: BackendClient,
        capacity: int = 100,
        ping_interval: float = 15.0,
    ) -> None:
        self.clock = clock
        self.backend = backend
        self.capacity = capacity
        self.ping_interval = ping_interval
        self.protocols: set[ConnectorTunnelProtocol] = set()
        self.draining = False
        #: Requests taken from the service since start.
        self.streams_started = 0

    def buildProtocol(self, addr: object) -> ConnectorTunnelProtocol:
        return ConnectorTunnelProtocol(
            self.clock, self.backend, self.capacity, self.ping_interval, self
        )
