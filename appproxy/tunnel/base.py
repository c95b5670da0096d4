"""
HTTP/2 plumbing shared by both ends of the tunnel.

The tunnel is one TLS connection that the connector dials; on it the roles are
reversed: the connector is the HTTP/2 I{server} and the service the HTTP/2
I{client} that opens one stream per user request (see C{docs/architecture.md}).

L{TunnelProtocol} feeds an L{h2.connection.H2Connection} the way Twisted's own
HTTP/2 server does: bytes in, events out, C{data_to_send()} written back.  It
adds what both ends need:

 - the factory (L{TunnelFactory}) that holds the clock, the PING interval and
   the set of connected protocols;
 - per-stream outbound buffers that send DATA only within the peer's flow
   control window, and tell the stream when its buffer has drained so it can
   resume whatever produces its data;
 - liveness: a PING every C{ping_interval}; a connection whose previous PING is
   still unanswered is aborted.

Inbound flow control is the subclasses' business: they acknowledge received
DATA only once the far side has consumed it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import attrs
import hyperframe.frame
from h2.config import H2Configuration
from h2.connection import H2Connection
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
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.tunnel.frame_repr import bounded_raw_data_repr

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

#: The path of the control stream on which the service pushes its settings to
#: the connector (no user request reaches it: see L{appproxy.tunnel.service}).
CONFIG_PATH = b"/.appproxy/config"


@attrs.define(eq=False)
class TunnelStream:
    """
    One stream's outbound state.  Subclasses add what the stream is for.
    """

    stream_id: int
    """The HTTP/2 stream id."""
    outbound: deque[bytes] = attrs.field(init=False, factory=deque)
    """DATA waiting for flow-control window."""
    outbound_size: int = attrs.field(init=False, default=0)
    """How many bytes C{outbound} holds."""
    end_pending: bool = attrs.field(init=False, default=False)
    """C{end_stream} was asked for while data was buffered."""
    closed: bool = attrs.field(init=False, default=False)
    """The stream has ended or been reset; nothing more is sent."""
    local_closed: bool = attrs.field(init=False, default=False)
    """Our side has sent END_STREAM."""

    def outbound_drained(self) -> None:
        """
        The outbound buffer emptied after having been blocked: resume whatever
        produces this stream's data.
        """

    def stream_aborted(self, reason: str) -> None:
        """
        The stream was reset by the peer or the connection went away.
        """


_P = TypeVar("_P", bound="TunnelProtocol[Any]")
_F = TypeVar("_F", bound="TunnelFactory[Any]")


class TunnelFactory(Factory[_P]):
    """
    Base for both ends' factories (attrs classes that declare these fields);
    L{TunnelProtocol} keeps C{protocols}, the connected ones, up to date.
    """

    noisy = False
    clock: IReactorTime
    ping_interval: float
    protocols: set[_P]


class TunnelProtocol(Protocol, Generic[_F]):
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
        self.conn = H2Connection(
            H2Configuration(
                client_side=self.client_side,
                header_encoding=None,
                # Each end checks what it receives; checking what we send
                # as well would only do the same work twice.
                validate_inbound_headers=True,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.streams: dict[int, TunnelStream] = {}
        self._ping_call: IDelayedCall | None = None
        self._ping_outstanding: bytes | None = None
        self.connected = False
        self.terminated = False
        self._receiving = False

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
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
        if self._receiving:
            # Written once, at the end of dataReceived.
            return
        data = self.conn.data_to_send()
        if data and self.transport is not None and self.connected:
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
        if isinstance(event, DataReceived):
            self.data_received(event)
        elif isinstance(event, WindowUpdated):
            self.window_updated(event.stream_id)
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
        elif isinstance(event, RemoteSettingsChanged):
            self.remote_settings_changed()
        elif isinstance(event, PingAckReceived):
            if event.ping_data == self._ping_outstanding:
                self._ping_outstanding = None
        elif isinstance(event, ConnectionTerminated):
            self.terminated = True
            self.connection_terminated(event)
        elif isinstance(event, TrailersReceived):
            # Trailers are not forwarded; the stream still ends normally.
            pass

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

    # -- outbound --------------------------------------------------------

    def reset_stream(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """
        Reset a stream we no longer want; quietly ignore one already closed.
        """
        self.streams.pop(stream_id, None)
        if not self.connected:
            return
        try:
            self.conn.reset_stream(stream_id, code)
        except H2Error:
            pass
        self.flush()

    def send_data(self, stream: TunnelStream, data: bytes) -> bool:
        """
        Queue C{data} on C{stream} and send as much as the flow-control window
        allows.

        @return: C{True} if everything went out, C{False} if some is buffered
            (the caller should pause its producer until C{outbound_drained}).
        """
        if stream.closed or not self.connected:
            return True
        if data:
            stream.outbound.append(data)
            stream.outbound_size += len(data)
        drained = self._send_pending(stream)
        self.flush()
        return drained

    def end_stream(self, stream: TunnelStream) -> None:
        if stream.closed or not self.connected:
            return
        stream.end_pending = True
        self._send_pending(stream)
        self.flush()

    def _send_pending(self, stream: TunnelStream) -> bool:
        conn = self.conn
        sid = stream.stream_id
        outbound = stream.outbound
        try:
            while outbound:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    return False
                chunk = outbound[0]
                if len(chunk) <= window:
                    outbound.popleft()
                    conn.send_data(sid, chunk)
                    stream.outbound_size -= len(chunk)
                else:
                    conn.send_data(sid, chunk[:window])
                    outbound[0] = chunk[window:]
                    stream.outbound_size -= window
            if stream.end_pending:
                stream.end_pending = False
                conn.end_stream(sid)
                stream.local_closed = True
                self.stream_send_closed(stream)
        except H2Error as e:
            # The stream was closed under us (reset by the peer); drop it.
            self.log.debug("Dropping data for closed stream {sid}: {e}", sid=sid, e=str(e))
            outbound.clear()
            stream.outbound_size = 0
            stream.closed = True
        return True

    def stream_send_closed(self, stream: TunnelStream) -> None:
        """
        Our side of C{stream} is closed (END_STREAM sent).
        """

    def window_updated(self, stream_id: int) -> None:
        if stream_id == 0:
            candidates: Iterable[TunnelStream] = list(self.streams.values())
        else:
            one = self.streams.get(stream_id)
            candidates = [one] if one is not None else []
        for stream in candidates:
            if stream.outbound or stream.end_pending:
                if self._send_pending(stream) and not stream.closed:
                    stream.outbound_drained()

    def acknowledge(self, stream_id: int, length: int) -> None:
        """
        Reopen the receive window for C{length} bytes that were consumed.
        """
        if length and self.connected:
            try:
                self.conn.acknowledge_received_data(length, stream_id)
            except H2Error:
                return
            self.flush()
