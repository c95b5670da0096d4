"""
The service's end of the tunnel, its stream events: the connector's
acknowledgement of dispatch, its response head (or error answer), the
response body and its end, each fed to the stream's machine
(L{appproxy.tunnel.machine}) and passed to the user side.  Those of an
upgraded stream (a WebSocket) go to its L{UpgradeStream}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.events import DataReceived, InformationalResponseReceived, ResponseReceived

from appproxy.tunnel.machine import StreamInput
from appproxy.tunnel.service_control import SettingsChannel
from appproxy.tunnel.service_stream import ServiceStream
from appproxy.tunnel.service_upgrade import UpgradeStream
from appproxy.tunnel.stream import TunnelStream


class ServiceStreamEvents:
    """
    Mixed into L{appproxy.tunnel.service.ServiceTunnelProtocol}, before
    L{appproxy.tunnel.base.TunnelProtocol}: the handlers it calls for each
    stream event, inside the stream's error boundary.
    """

    streams: dict[int, TunnelStream]
    settings: SettingsChannel
    bytes_received: int
    """Response body bytes received from the connector."""

    if TYPE_CHECKING:

        def reset_stream(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None: ...

        def acknowledge(self, stream_id: int, length: int) -> None: ...

    def stream_send_closed(self, stream: TunnelStream) -> None:
        if isinstance(stream, ServiceStream):
            stream.feed(StreamInput.BODY_ENDED)
        elif isinstance(stream, UpgradeStream):
            stream.send_closed()

    def informational_received(self, event: InformationalResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if isinstance(stream, ServiceStream) and not stream.job.dispatched:
            stream.feed(StreamInput.DISPATCHED)
            stream.job.dispatched = True
            if stream.job.has_body:
                stream.job.exchange.body_wanted(stream)

    def response_received(self, event: ResponseReceived) -> None:
        sid = event.stream_id
        if sid in self.settings:
            self.settings.answered(sid, event.headers)
            return
        stream = self.streams.get(sid)
        if not isinstance(stream, ServiceStream) or stream.finished:
            if isinstance(stream, UpgradeStream) and not stream.finished:
                stream.answered(event.headers)
                return
            self.reset_stream(sid)
            return
        stream.job.dispatched = True
        status = 502
        headers: list[tuple[bytes, bytes]] = []
        error_kind: bytes | None = None
        error_detail = b""
        for name, value in event.headers:
            if name.startswith(b":"):
                if name == b":status":
                    status = int(value)
            elif name.startswith(b"appproxy-"):
                if name == b"appproxy-error":
                    error_kind = value
                elif name == b"appproxy-error-detail":
                    error_detail = value
            else:
                headers.append((name, value))
        if error_kind is not None:
            stream.feed(StreamInput.ERROR_ANSWERED)
            stream._done(ErrorCodes.NO_ERROR)
            stream.job.exchange.upstream_error(
                status, error_kind.decode("latin-1"), error_detail.decode("latin-1")
            )
            return
        # Responded only once the user side took the head: if it raises,
        # nothing went to the user yet and the boundary answers 502.
        stream.job.exchange.response_started(status, headers)
        stream.responded = True
        stream.feed(StreamInput.RESPONSE_STARTED)

    def data_received(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if not isinstance(stream, ServiceStream) or stream.finished:
            if isinstance(stream, UpgradeStream) and not stream.finished:
                stream.received(event)
                return
            # Settings stream reply or a stream we gave up on: just reopen the window.
            self.acknowledge(event.stream_id, length)
            return
        self.bytes_received += len(event.data)
        if event.stream_ended is not None:
            # The data ends the stream: passed on with its end, in one step
            # (for an HTTP/2 client, one DATA frame with END_STREAM), then the
            # stream is done, as in stream_ended (which then finds it
            # finished).  Its bytes are acknowledged as the stream is let go,
            # with whatever it held back.  Should the user side raise, the
            # stream is still live: the error boundary cuts the response.
            stream.unacked += length
            stream.job.exchange.response_data(event.data, True)
            stream.feed(StreamInput.RESPONSE_ENDED)
            stream._done(ErrorCodes.NO_ERROR)
            return
        stream.feed(StreamInput.RESPONSE_DATA)
        if stream.paused or stream.held:
            stream.unacked += length
        else:
            self.acknowledge(event.stream_id, length)
        stream.job.exchange.response_data(event.data)

    def stream_ended(self, stream_id: int) -> None:
        if stream_id in self.settings:
            self.settings.ended(stream_id)
            return
        stream = self.streams.get(stream_id)
        if not isinstance(stream, ServiceStream) or stream.finished:
            if isinstance(stream, UpgradeStream) and not stream.finished:
                stream.ended()
            return
        # If the app answered before the whole body was sent, this resets the
        # stream: the rest of the body is not wanted.
        stream.feed(StreamInput.RESPONSE_ENDED)
        stream._done(ErrorCodes.NO_ERROR)
        stream.job.exchange.response_ended()
