"""
HTTP/2 plumbing shared by both ends of the tunnel.

The tunnel is one TLS connection that the connector dials; on it the roles are
reversed: the connector is the HTTP/2 I{server} and the service the HTTP/2
I{client} that opens one stream per user request (see C{docs/architecture.md}).

L{TunnelProtocol} feeds its HTTP/2 connection
(L{appproxy.tunnel.connection.TunnelConnection}: ours, with h2's API, events
and exceptions) the way Twisted's own HTTP/2 server feeds h2's: bytes in,
events out, C{data_to_send()} written back.  It adds what both ends need:

 - the factory (L{TunnelFactory}) that holds the clock, the PING interval,
   the set of connected protocols and the count of failed streams;
 - per-stream outbound buffers (L{appproxy.tunnel.outbound});
 - the per-stream error boundary (L{TunnelProtocol.within_stream}): every
   stream event, and whatever either end does for one stream outside of an
   event, runs inside it; an exception there ends that stream (its user gets
   an error page, the peer a RST_STREAM), is logged with the request id and
   counted, and the connection and its other streams go on.  Only
   connection-level events (SETTINGS, PING, GOAWAY) and HTTP/2 protocol
   errors end the connection;
 - liveness: a PING every C{ping_interval}; a connection whose previous PING is
   still unanswered is aborted;
 - the transport's back pressure: the protocol is its TCP transport's
   streaming producer, as Twisted's own HTTP/2 server is its transport's.  While the transport's
   buffer is full (C{pauseProducing}) no DATA is sent (the streams' own
   producers pause as their buffers fill), and a peer that never reads
   while it keeps sending frames we must answer (PING, SETTINGS, ...) is
   dropped once L{outbound.MAX_BUFFERED_CONTROL_BYTES} have piled up
   (C{_maxBufferedControlFrameBytes} in twisted.web's HTTP/2);
 - C{TCP_NODELAY}: small frames (headers, acknowledgements) go at once.

Inbound flow control is the subclasses' business: they acknowledge received
DATA only once the far side has consumed it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

import hyperframe.frame
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes
from h2.stream import StreamState
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from appproxy.tunnel.connection import TunnelConnection
from appproxy.tunnel.fields import UnsendableFields
from appproxy.tunnel.frame_repr import bounded_raw_data_repr
from appproxy.tunnel.outbound import OutboundStreams, writes_held
from appproxy.tunnel.stream import TunnelStream

__all__ = ["TunnelFactory", "TunnelProtocol", "TunnelStream", "bounded_raw_data_repr"]

# h2 reprs every frame it receives; see L{bounded_raw_data_repr}.
hyperframe.frame._raw_data_repr = bounded_raw_data_repr

#: Per-stream receive window: how much DATA may be in flight, unacknowledged,
#: on one stream.  Large enough to fill a fast loopback link, small enough that
#: a slow reader holds at most this much per stream in memory.
STREAM_WINDOW = 1 << 20
#: Connection-wide receive window.
CONNECTION_WINDOW = 1 << 24
#: Largest DATA frame we accept; large frames cut the per-frame cost.
MAX_FRAME_SIZE = 1 << 18
#: Request and response header lists larger than this are refused.
MAX_HEADER_LIST_SIZE = 1 << 16

_P = TypeVar("_P", bound="TunnelProtocol[Any]")
_F = TypeVar("_F", bound="TunnelFactory[Any]")
_A = ParamSpec("_A")

#: The events that concern one stream: what their handlers raise ends that
#: stream only (see L{TunnelProtocol.within_stream}).
_STREAM_EVENTS = (
    DataReceived,
    ResponseReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    InformationalResponseReceived,
    TrailersReceived,
)


class TunnelFactory(Factory[_P]):
    """
    Base for both ends' factories (attrs classes that declare these fields);
    L{TunnelProtocol} keeps C{protocols}, the connected ones, up to date.
    """

    noisy = False
    clock: IReactorTime
    ping_interval: float
    protocols: set[_P]
    stream_errors: int
    """Streams ended by an exception in their handling (the connection went on)."""


class TunnelProtocol(OutboundStreams, Protocol, Generic[_F]):
    """
    Base for the service's and the connector's tunnel protocols.
    """

    log = Logger()
    client_side: bool = False
    factory: _F

    def __init__(self, factory: _F) -> None:
        self.factory = factory
        self.clock = factory.clock
        self.ping_interval = factory.ping_interval
        # Each end checks what it receives as h2 would (stricter where RFC
        # 9113 asks), and what it sends with the cheaper checks of fields.py.
        self.conn = TunnelConnection(self.client_side)
        self.streams: dict[int, TunnelStream] = {}
        self._ping_call: IDelayedCall | None = None
        self._ping_outstanding: bytes | None = None
        self.connected = False
        self.terminated = False
        self._receiving = False
        #: The transport's buffer is full: no DATA until it resumes us.
        self.transport_paused = False
        #: Bytes written while paused (see MAX_BUFFERED_CONTROL_BYTES).
        self.paused_bytes = 0

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        # On the TCP transport under TLS (TLS would hold a clean close until
        # its producer went away): its buffer is where the bytes pile up.
        tcp: Any = self.transport
        if isinstance(tcp, TLSMemoryBIOProtocol):
            tcp = tcp.transport
        tcp.registerProducer(self, True)
        try:
            tcp.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # not TCP (memory transports in tests, UNIX sockets)
        self.conn.initiate_connection()
        self.conn.update_settings(self.local_settings())
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self._ping_call = self.clock.callLater(self.ping_interval, self._ping)
        self.factory.protocols.add(self)

    def local_settings(self) -> dict[int, int]:
        return {
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            SettingCodes.ENABLE_PUSH: 0,
        }

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.factory.protocols.discard(self)
        self.connected = False
        self.terminated = True
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.closed = True
            stream.stream_aborted("the tunnel connection was lost")

    def flush(self) -> None:
        if self._receiving or writes_held(self):
            # Written once, at the end of dataReceived or of the hold.
            return
        data = self.conn.data_to_send()
        if data and self.transport is not None and self.connected:
            if self.transport_paused and self.unread(len(data)):
                return
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- liveness --------------------------------------------------------

    def _ping(self) -> None:
        self._ping_call = None
        if not self.connected:
            return
        if self._ping_outstanding is not None:
            self.log.warn("Tunnel peer did not answer a PING in time; dropping the connection")
            self.abort()
            return
        self._ping_outstanding = os.urandom(8)
        self.conn.ping(self._ping_outstanding)
        self.flush()
        self._ping_call = self.clock.callLater(self.ping_interval, self._ping)

    # -- inbound ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except (ProtocolError, H2Error) as e:
            self.log.warn("HTTP/2 protocol error on the tunnel: {error}", error=str(e))
            self.flush()
            self.abort()
            return
        self._receiving = True
        try:
            for event in events:
                self.dispatch(event)
        finally:
            self._receiving = False
        self.flush()

    def dispatch(self, event: Event) -> None:
        if isinstance(event, _STREAM_EVENTS):
            # within_stream's error boundary, inlined (per event).
            try:
                self._stream_event(event)
            except Exception:
                self.stream_error(event.stream_id, Failure())
        elif isinstance(event, WindowUpdated):
            self.window_updated(event.stream_id)
        elif isinstance(event, RemoteSettingsChanged):
            self.remote_settings_changed()
        elif isinstance(event, PingAckReceived):
            if event.ping_data == self._ping_outstanding:
                self._ping_outstanding = None
        elif isinstance(event, ConnectionTerminated):
            self.terminated = True
            self.connection_terminated(event)

    def _stream_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self.data_received(event)
        elif isinstance(event, ResponseReceived):
            self.response_received(event)
        elif isinstance(event, RequestReceived):
            self.request_received(event)
        elif isinstance(event, StreamEnded):
            self.stream_ended(event.stream_id)
        elif isinstance(event, StreamReset):
            self._stream_reset(event.stream_id, event.error_code)
        elif isinstance(event, InformationalResponseReceived):
            self.informational_received(event)
        # TrailersReceived: trailers are not forwarded; the stream still
        # ends normally.

    # -- the per-stream error boundary -----------------------------------

    def within_stream(
        self, stream_id: int, handler: Callable[_A, object], *args: _A.args, **kw: _A.kwargs
    ) -> None:
        """
        Run C{handler}, which works on stream C{stream_id}, inside the
        stream's error boundary: whatever it raises ends that stream (see
        L{stream_error}), never the connection.  Every stream event goes
        through here, and so does what each end does for a stream outside
        of an event (a backend's answer, a job taken from the queue).
        """
        try:
            handler(*args, **kw)
        except Exception:
            self.stream_error(stream_id, Failure())

    def stream_errback(self, failure: Failure, stream_id: int) -> None:
        """
        The error boundary for a L{Deferred} chain working on C{stream_id}:
        add it last.
        """
        self.stream_error(stream_id, failure)
        self.flush()

    def stream_error(self, stream_id: int, failure: Failure) -> None:
        """
        Handling stream C{stream_id} raised: log it with the request id,
        count it, let the subclass answer (L{stream_failed}) and reset the
        stream.  The connection and its other streams go on.
        """
        self.factory.stream_errors += 1
        stream = self.streams.get(stream_id)
        rid = stream.request_id if stream is not None else "-"
        if failure.check(UnsendableFields):
            self.log.warn(
                "Stream {sid} (request {rid}) ended: {error}",
                sid=stream_id,
                rid=rid,
                error=str(failure.value),
            )
        else:
            self.log.failure(
                "Stream {sid} (request {rid}) failed; ending that stream only",
                failure,
                LogLevel.error,
                sid=stream_id,
                rid=rid,
            )
        try:
            self.stream_failed(stream_id, stream, failure)
        except Exception:
            self.log.failure(
                "Ending stream {sid} (request {rid}) failed too", sid=stream_id, rid=rid
            )
        if stream is not None:
            stream.closed = True
        current = self.streams.get(stream_id)
        if current is not None and current is not stream:
            # h2 never opened the failed stream, and its id went to the next.
            return
        self.streams.pop(stream_id, None)
        code = ErrorCodes.NO_ERROR if self.sent_end(stream_id) else ErrorCodes.INTERNAL_ERROR
        self.reset_stream(stream_id, code)

    def stream_failed(self, stream_id: int, stream: TunnelStream | None, failure: Failure) -> None:
        """
        Handling C{stream} failed with C{failure}: answer its user if that
        is still possible and release what it holds.  The base class resets
        the stream afterwards.
        """
        if stream is not None:
            stream.stream_aborted("the stream failed")

    def stream_open(self, stream_id: int) -> bool:
        """
        Whether h2 still counts C{stream_id} as open (against the peer's
        C{SETTINGS_MAX_CONCURRENT_STREAMS}).
        """
        stream = self.conn.streams.get(stream_id)
        return stream is not None and not stream.closed

    def sent_end(self, stream_id: int) -> bool:
        """Whether our side of C{stream_id} is closed (or the stream is)."""
        stream = self.conn.streams.get(stream_id)
        return stream is None or stream.state_machine.state in (
            StreamState.HALF_CLOSED_LOCAL,
            StreamState.CLOSED,
        )

    def data_received(self, event: DataReceived) -> None:
        raise NotImplementedError

    def response_received(self, event: ResponseReceived) -> None:
        self.reset_stream(event.stream_id)

    def request_received(self, event: RequestReceived) -> None:
        self.reset_stream(event.stream_id)

    def informational_received(self, event: InformationalResponseReceived) -> None:
        pass

    def stream_ended(self, stream_id: int) -> None:
        raise NotImplementedError

    def remote_settings_changed(self) -> None:
        pass

    def connection_terminated(self, event: ConnectionTerminated) -> None:
        pass

    def _stream_reset(self, stream_id: int, error_code: int | ErrorCodes) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.closed = True
            stream.stream_aborted(f"the stream was reset ({ErrorCodes(error_code).name})")
