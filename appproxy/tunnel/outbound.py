"""
The sending half of a tunnel connection, mixed into
L{appproxy.tunnel.base.TunnelProtocol}: per-stream outbound buffers that send
DATA only within the peer's flow-control window and tell the stream when its
buffer has drained; resets; reopening the receive window as data is
consumed.

Writes can be held for the length of one call (L{hold_writes},
L{release_writes}: the connector holds them while its HTTP client parses
what a backend sent): small DATA waits in its stream's buffer, and what
the connections would write goes in one write each at the end.  A small
response's body then leaves in the same DATA frame as its END_STREAM (not
in a DATA frame followed by an empty one), and its frames in one write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from twisted.logger import Logger

from appproxy.tunnel.connection import TunnelConnection
from appproxy.tunnel.stream import TunnelStream

#: Bytes written while the transport has paused us (frames the peer made us
#: send without reading them) beyond which the peer is dropped.
MAX_BUFFERED_CONTROL_BYTES = 1 << 18
#: DATA a stream holds while writes are held (more is sent at once).
MAX_HELD_BYTES = 1 << 16


class _Holding:
    """What waits for L{release_writes}."""

    depth = 0
    streams: list[tuple[OutboundStreams, TunnelStream]] = []
    protocols: list[OutboundStreams] = []


def hold_writes() -> None:
    """
    Hold the tunnel's writes until the matching L{release_writes} (calls
    nest): small DATA stays in its stream's buffer, to go out with what
    follows it (its END_STREAM, more DATA), and each connection writes
    once.  Release it in a C{finally}.
    """
    _Holding.depth += 1


def release_writes() -> None:
    """Send what L{hold_writes} held, once the outermost hold ends."""
    _Holding.depth -= 1
    if _Holding.depth:
        return
    streams, _Holding.streams = _Holding.streams, []
    for proto, stream in streams:
        stream.data_held = False
        if stream.outbound and proto.connected and not stream.closed:
            proto.within_stream(stream.stream_id, proto._send_pending, stream)
    protocols, _Holding.protocols = _Holding.protocols, []
    for proto in protocols:
        proto.flush_held = False
        proto.flush()


def writes_held(proto: OutboundStreams) -> bool:
    """Whether writes are held; if so, C{proto} flushes when they are released."""
    if not _Holding.depth:
        return False
    if not proto.flush_held:
        proto.flush_held = True
        _Holding.protocols.append(proto)
    return True


class OutboundStreams:
    """
    What both ends send on their streams, and the transport's back pressure
    on it (the protocol is its TCP transport's streaming producer).
    """

    log: Logger
    conn: TunnelConnection
    connected: int
    streams: dict[int, TunnelStream]
    transport_paused: bool
    paused_bytes: int
    #: A flush waits for L{release_writes}.
    flush_held: bool = False

    def flush(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    # -- IPushProducer -----------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: no DATA until it resumes us."""
        self.transport_paused = True

    def resumeProducing(self) -> None:
        self.transport_paused = False
        self.paused_bytes = 0
        if self.connected:
            # Every stream with DATA waiting sends what its window allows.
            self.window_updated(0)
            self.flush()

    def stopProducing(self) -> None:
        """The transport is closing: connectionLost follows."""

    def unread(self, size: int) -> bool:
        """
        C{size} more bytes are written while the transport has paused us:
        whether the peer, which is not reading them, is dropped for it.
        """
        self.paused_bytes += size
        if self.paused_bytes <= MAX_BUFFERED_CONTROL_BYTES:
            return False
        self.log.warn(
            "Tunnel peer does not read what it makes us send ({size} bytes waiting);"
            " dropping the connection",
            size=self.paused_bytes,
        )
        self.connected = False
        self.abort()
        return True

    def within_stream(self, stream_id: int, handler: Callable[..., object], *args: Any) -> None:
        raise NotImplementedError

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
            if (
                _Holding.depth
                and not stream.end_pending
                and stream.outbound_size <= MAX_HELD_BYTES
                and not self.transport_paused
            ):
                # Sent with what follows, at the latest on release_writes.
                if not stream.data_held:
                    stream.data_held = True
                    _Holding.streams.append((self, stream))
                return True
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
                if self.transport_paused:
                    # The transport's buffer is full: resumeProducing goes on.
                    return False
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    return False
                chunk = outbound[0]
                if len(chunk) <= window:
                    outbound.popleft()
                    stream.outbound_size -= len(chunk)
                    if not outbound and stream.end_pending:
                        # The last DATA carries END_STREAM: no empty frame.
                        stream.end_pending = False
                        conn.send_data(sid, chunk, end_stream=True)
                        stream.local_closed = True
                        self.stream_send_closed(stream)
                        return True
                    conn.send_data(sid, chunk)
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
                self.within_stream(stream.stream_id, self._resume_sending, stream)

    def _resume_sending(self, stream: TunnelStream) -> None:
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
