"""
The public listener's HTTP/2 connection: twisted.web's, guarded and leaner.

Guarded: a token bucket for DATA frames without payload that do not end
their stream (the "empty frames" flood of CVE-2019-9518; twisted.web bounds
resets and control frames), answered with GOAWAY C{ENHANCE_YOUR_CALM}; a TLS
connection it ends is closed at once (twisted.web's stays open until the
idle timeout); fewer closed streams remembered (L{CLOSED_STREAMS_KEPT}, not
h2's 65,536).

Leaner: response header blocks encoded by the tunnel's HPACK encoder
(L{appproxy.tunnel.fields.TunnelEncoder}: request ids and cookies as
never-indexed literals) and not validated again by h2 when
L{appproxy.tunnel.fields.field_problem} finds them plainly valid; received
blocks checked in fewer steps (L{appproxy.frontend.h2_inbound}); data that
twisted.web's sending loop would send at once sent without a turn of it; a
response's header block sent with its first data
(L{GuardedH2Connection.write_first}), its last data with its end in one DATA
frame (L{GuardedH2Connection.write_last}); a response ended as soon as its
data has gone; a stream held back for a slow reader (L{appproxy.frontend.relay})
released as soon as that loop has drained its queue.  An idle connection
keeps less: settings, HPACK tables and the control-frame buffer in lists
(L{appproxy.frontend.h2_compact}), h2's dispatch table shared, an ended
stream forgotten at once.

L{appproxy.frontend.channels.ProxyChannelProtocol} makes the public
listener's HTTP/2 connections guarded ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection

from appproxy.config.model import ClientLimits
from appproxy.frontend import h2_sending
from appproxy.frontend.h2_compact import BoundedDict, ListDeque, compact_table
from appproxy.frontend.h2_fields import ClientEncoder
from appproxy.frontend.h2_idle import IdleDefaults, h2_settle_idle, h2_still_idle, share_h2_parts
from appproxy.frontend.h2_inbound import adopt
from appproxy.frontend.h2_requests import lean
from appproxy.frontend.h2_schedule import RoundRobin
from appproxy.frontend.h2_settings import share_settings, widen_receive_windows
from appproxy.frontend.idle import shared_address, went_idle
from appproxy.frontend.peer import peer_text
from appproxy.observe.metrics import LIMIT_HITS
from appproxy.tunnel.fields import field_problem

__all__ = ["CLOSED_STREAMS_KEPT", "EMPTY_DATA_BURST", "EMPTY_DATA_RATE", "GuardedH2Connection"]

#: Closed streams a client's connection remembers, to recognise the frames
#: the client had in flight when a stream was reset.
CLOSED_STREAMS_KEPT = 1024
_DEFAULT = ClientLimits()
#: Empty DATA frames (not ending their stream) a connection may send at once
#: (the default of C{[limits] h2_empty_data_burst}).
EMPTY_DATA_BURST = _DEFAULT.h2_empty_data_burst
#: ... and per second after that (C{h2_empty_data_rate}).
EMPTY_DATA_RATE = _DEFAULT.h2_empty_data_rate

log = Logger()


class GuardedH2Connection(IdleDefaults, H2Connection):
    """
    twisted.web's HTTP/2 server connection, with a token bucket for DATA
    frames that carry no payload and do not end their stream.

    Only made by L{appproxy.frontend.channels.ProxyChannelProtocol}, which
    turns twisted.web's freshly made connection into one (so it has no
    C{__init__} of its own: L{start_guard} sets its state up).
    """

    _empty_tokens: float
    _empty_burst: int
    _empty_rate: float
    _empty_tokens_at: float
    _flooded: bool
    _drain_watches: dict[int, tuple[int, Callable[[], None]]]
    _corked: bool
    #: The stream whose last data is being written (L{write_last}), then
    #: the one that data ended, until its request finishes (L{endRequest}).
    _ending: int = 0
    _ended: int = 0
    #: Streams with data held for a closed flow-control window (h2_sending).
    _window_blocked: set[int] | None = None
    #: The transport's addresses, once asked for.
    _peer: Any = None
    _host: Any = None

    def start_guard(self, limits: ClientLimits | None = None) -> None:
        """Set the guard up, with the frame budgets of C{limits} (C{[limits]} C{h2_*})."""
        limits = limits or _DEFAULT
        self._empty_burst, self._empty_rate = limits.h2_empty_data_burst, limits.h2_empty_data_rate
        # twisted.web's bucket for stream resets (Rapid Reset), as configured.
        self._resetTokenBurst = self._resetTokens = limits.h2_reset_burst
        self._resetTokenRate = limits.h2_reset_rate
        self._empty_tokens = float(self._empty_burst)
        self._empty_tokens_at = self._reactor.seconds()
        self._flooded = self._corked = False
        self._drain_watches = {}
        self.priority = RoundRobin()  # not twisted.web's priority tree (h2_schedule)
        # A block field_problem passes is sent as it is (see writeHeaders).
        self.conn.config.normalize_outbound_headers = False
        self.conn.config.validate_outbound_headers = False
        # Nothing has been encoded or decoded yet: the tables are still empty.
        conn = self.conn
        conn.encoder = ClientEncoder()
        adopt(conn)
        lean(conn)
        # h2 remembers 65,536 closed streams per connection (about 8 MiB once
        # a client has made that many requests on it): keep fewer.
        conn._closed_streams = BoundedDict(CLOSED_STREAMS_KEPT)
        # What an idle connection keeps, smaller (see h2_compact, h2_settings).
        share_settings(conn.local_settings)
        share_settings(conn.remote_settings)
        widen_receive_windows(conn)  # sent with the next write (the guard's first)
        compact_table(conn.encoder.header_table)
        compact_table(conn.decoder.header_table)
        self._bufferedControlFrames = ListDeque(self._bufferedControlFrames)  # type: ignore[assignment]
        share_h2_parts(conn)

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any, streamID: int
    ) -> None:
        # twisted.web's, for names given capitalised (HTTP/2 wants them
        # lowercase), and with h2's outbound normalisation and validation
        # (off: see start_guard) only for a block field_problem finds fault
        # with (h2 strips what it may, refuses the rest, as before).
        fields = [(b":status", code), *[(name.lower(), value) for name, value in headers]]
        config = self.conn.config
        plain = field_problem(fields) is None
        if not plain:
            config.normalize_outbound_headers = config.validate_outbound_headers = True
        try:
            self.conn.send_headers(streamID, fields)
        except h2.exceptions.StreamClosedError:
            # The client closed the stream: as twisted.web, nothing to do.
            return
        finally:
            if not plain:
                config.normalize_outbound_headers = config.validate_outbound_headers = False
        if not self._corked:
            self._tryToWriteControlData()

    def write_first(self, request: Any, data: bytes) -> None:
        """
        C{request.write(data)}, the first write of C{request}'s response: its
        header block goes out with the data (one write to the transport,
        not two), or at the latest when this returns.
        """
        self._corked = True
        try:
            request.write(data)
        finally:
            self._corked = False
        if self.transport is not None:
            self._tryToWriteControlData()

    def write_last(self, request: Any, data: bytes) -> None:
        """
        C{request.write(data)}, the last write of C{request}'s response,
        which is then finished: the data carries END_STREAM when it goes at
        once (see L{writeDataToStream}), not an empty DATA frame of its own
        after it; with the header block if this is the first write.
        """
        first = not request.startedWriting
        if not data and not first:
            return
        self._ending = request.channel.streamID
        self._corked = first
        try:
            request.write(data)
        finally:
            self._ending = 0
            self._corked = False
        if first and self.transport is not None:
            self._tryToWriteControlData()

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        # twisted.web queues the data and wakes its sending loop, which sends
        # it and turns once more (a callLater(0), a priority step, a new
        # Deferred) to find nothing left.  While that loop is idle, nothing
        # waits for the transport, and the data fits the windows and one
        # frame, send it now, as the loop would.
        conn = self.conn
        if (
            data
            and self._sendingDeferred is not None
            and self._consumerBlocked is None
            and not self._bufferedControlFrames
            and self._stillProducing
            and not self._outboundStreamQueues.get(streamID, True)
            and len(data) <= conn.max_outbound_frame_size
        ):
            left = conn.local_flow_control_window(streamID) - len(data)
            if left >= 0:
                if streamID == self._ending:
                    # The response's last data (write_last): it ends the
                    # stream; the request's finish only lets it go.
                    conn.send_data(streamID, data, end_stream=True)
                    self.transport.write(conn.data_to_send())  # type: ignore[union-attr]
                    self.resetTimeout()
                    self._ended = streamID
                    self._requestDone(streamID)
                    return
                conn.send_data(streamID, data)
                self.transport.write(conn.data_to_send())  # type: ignore[union-attr]
                self.resetTimeout()
                if left == 0:
                    self.streams[streamID].flowControlBlocked()
                return
        super().writeDataToStream(streamID, data)
        if conn.local_flow_control_window(streamID) <= 0:
            h2_sending.hold_for_window(self, streamID)  # woken when it opens

    def dataReceived(self, data: bytes) -> None:
        if self._flooded:
            return
        super().dataReceived(data)
        if self._window_blocked:
            h2_sending.window_opened(self)
        if self._flooded:
            # Close only once the whole batch of events is handled: the
            # connection's event loop goes on after a handler returns.
            LIMIT_HITS.labels(limit="h2_empty_data").inc()
            log.warn("Empty DATA frame flood from {peer}: GOAWAY", peer=peer_text(self.transport))
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._terminate(Failure(ConnectionLost("Empty DATA frame flood")))

    # -- response data queued for the client ---------------------------------

    def queued(self, stream_id: int) -> int:
        """Response bytes twisted.web queued for stream C{stream_id}, not yet sent."""
        queue = self._outboundStreamQueues.get(stream_id, ())
        return sum(len(chunk) for chunk in queue if isinstance(chunk, bytes))

    def watch_drain(self, stream_id: int, below: int, drained: Callable[[], None]) -> None:
        """
        Call C{drained()} once, as soon as stream C{stream_id} has at most
        C{below} bytes queued (twisted.web says nothing when its queue
        drains: its sending loop is watched instead of polled).
        """
        self._drain_watches[stream_id] = (below, drained)

    def unwatch_drain(self, stream_id: int) -> None:
        self._drain_watches.pop(stream_id, None)

    def endRequest(self, streamID: int) -> None:
        # twisted.web queues the end behind the stream's data and sends it on
        # its sending loop's next turn (a callLater(0), a priority step and a
        # write of its own).  When nothing of the stream waits and nothing
        # waits for the transport, end the stream now, as that turn would.
        if streamID == self._ended:
            self._ended = 0  # its last data ended it (write_last): let go already
            return
        queue = self._outboundStreamQueues.get(streamID)
        if (
            queue is not None
            and not queue
            and self._consumerBlocked is None
            and not self._bufferedControlFrames
            and streamID in self.streams
        ):
            try:
                self.conn.end_stream(streamID)
            except h2.exceptions.H2Error:
                pass  # left to twisted.web's own path, as before
            else:
                self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]
                self._requestDone(streamID)
                return
        super().endRequest(streamID)

    def _requestDone(self, streamID: int) -> None:
        super()._requestDone(streamID)
        # h2 forgets a closed stream only when it next counts the open ones
        # (a new stream): an idle connection would keep its last stream's
        # state.  Forget it now, as h2 would.
        conn = self.conn
        h2_stream = conn.streams.get(streamID)
        if h2_stream is not None and h2_stream.closed:
            del conn.streams[streamID]
            conn._closed_streams[streamID] = h2_stream.closed_by
        if not self.streams:
            went_idle(self, self._reactor)

    #: No stream under way, and not lost; once idle a while, what is given back.
    still_idle = h2_still_idle
    settle_idle = h2_settle_idle

    def _sendPrioritisedData(self, *args: Any) -> None:
        # Several frames per turn of the reactor; one when woken (h2_sending).
        h2_sending.send_prioritised(self, 1 if args else h2_sending.FRAMES_PER_TURN)
        if self._drain_watches:
            for stream_id, (below, drained) in list(self._drain_watches.items()):
                if self.queued(stream_id) <= below:
                    del self._drain_watches[stream_id]
                    drained()

    def getPeer(self) -> Any:
        # Each request asks (twisted.web's Request, for its client): the
        # address is the connection's, the same for all of them.
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def getHost(self) -> Any:
        host = self._host
        if host is None:
            host = self._host = shared_address(super().getHost())
        return host

    def timeoutConnection(self) -> None:
        # twisted.web's, logging the client as host:port, not an object's repr.
        log.info("Timing out HTTP/2 client {peer}", peer=peer_text(self.transport))
        streams = self.conn.open_outbound_streams + self.conn.open_inbound_streams
        codes = h2.errors.ErrorCodes
        self.conn.close_connection(error_code=codes.PROTOCOL_ERROR if streams else codes.NO_ERROR)
        transport: Any = self.transport
        transport.write(self.conn.data_to_send())
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        transport.loseConnection()

    def forceAbortClient(self) -> None:
        log.info("Forcibly timing out HTTP/2 client {peer}", peer=peer_text(self.transport))
        self._abortingCall = None
        transport: Any = self.transport
        transport.abortConnection()

    def _terminate(self, reason: Failure) -> None:
        # A TLS transport closes only once its producer is gone, and this
        # connection is its producer: without this, a connection ended for a
        # protocol error or a flood (twisted.web's reset flood too) would
        # send GOAWAY and then stay open until the idle timeout.
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()
        super()._terminate(reason)

    def _gone(self, stream_id: int) -> bool:
        """
        Whether a stream's request is answered and ended already (an early
        answer, a 302, 401, 413 or 429, while its body still arrives):
        twisted.web forgets a stream once its response is done, and would
        take what the client still sends on it for an error of the whole
        connection, every other stream on it lost.
        """
        return stream_id not in self.streams

    def _requestDataReceived(self, event: h2.events.DataReceived) -> None:
        if self._gone(event.stream_id):
            # Dropped, and its window given back (the connection's, and the
            # stream's while h2 still knows it), so the client can go on.
            if event.flow_controlled_length:
                try:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                except h2.exceptions.H2Error:
                    pass
                self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]
            return
        if event.data or event.stream_ended is not None:
            super()._requestDataReceived(event)
            return
        if self._flooded:
            return
        now = self._reactor.seconds()
        # A wall clock: never let a step backwards drain the bucket.
        elapsed = max(0.0, now - self._empty_tokens_at)
        self._empty_tokens = min(
            float(self._empty_burst), self._empty_tokens + elapsed * self._empty_rate
        )
        self._empty_tokens_at = now
        if self._empty_tokens < 1:
            self._flooded = True
            return
        self._empty_tokens -= 1
        if event.flow_controlled_length:
            # Padding only: it used window, which the stream gives back.
            super()._requestDataReceived(event)

    def _requestEnded(self, event: h2.events.StreamEnded) -> None:
        if event.stream_id in self.streams:  # not self._gone(...), one call less
            super()._requestEnded(event)

    def _requestAborted(self, event: h2.events.StreamReset) -> None:
        if not self._gone(event.stream_id):
            super()._requestAborted(event)
