"""
Deadlines for slow HTTP/2 clients on the public listener, as
L{appproxy.frontend.deadlines} sets them for HTTP/1.1 (the same
L{appproxy.config.model.ClientLimits}):

  - a header block (a HEADERS frame and its CONTINUATIONs, or the
    connection preface) must be complete within C{header_timeout} seconds of
    its first byte.  twisted.web's idle timer restarts on every frame, so a
    client sending a CONTINUATION (or a byte) every few seconds would hold
    the connection for as long as it likes; no other frame can be read while
    a header block is open, so the connection is closed (GOAWAY);
  - a stream's request body must keep C{body_min_rate} bytes per second
    after an allowance of C{header_timeout} seconds, each byte buying
    C{1 / body_min_rate} seconds, never more than C{header_timeout} ahead.
    Time the client cannot send (the service paused the stream, or the
    stream's or the connection's flow-control window is closed) is not
    counted against it.  A stream below the rate gets a 408 page (or, if its
    response began, a reset); the connection and its other streams go on.
"""

from __future__ import annotations

from typing import Any, Protocol

import h2.errors
import h2.events
import h2.exceptions
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.config.model import ClientLimits
from appproxy.frontend.h2_guard import GuardedH2Connection
from appproxy.frontend.idle import lost
from appproxy.frontend.peer import peer_text
from appproxy.observe.metrics import LIMIT_HITS

__all__ = ["DeadlineH2Connection"]

log = Logger()

#: Frame types whose (partly received) frame opens a header block.
_HEADER_FRAME_TYPES = frozenset({0x1, 0x5, 0x9})
#: Frame header length (RFC 9113 section 4.1).
_FRAME_HEADER = 9


class LimitsSource(Protocol):
    """Where the current limits are (replaced on reload)."""

    limits: ClientLimits


class DeadlineH2Connection(GuardedH2Connection):
    """
    The public HTTP/2 connection, with the deadlines of the module docstring.
    Made by L{appproxy.frontend.channels.ProxyChannelProtocol} (no
    C{__init__}: L{start_deadlines} sets its state up).
    """

    _limits_source: LimitsSource | None
    _header_timer: IDelayedCall | None
    _body_deadlines: dict[int, float]
    _body_timer: IDelayedCall | None

    def start_deadlines(self, source: LimitsSource | None) -> None:
        self._limits_source = source
        self._header_timer = None
        self._body_deadlines = {}
        self._body_timer = None
        self._watch_header_block()

    def _limits(self) -> ClientLimits | None:
        source = self._limits_source
        return None if source is None else source.limits

    # -- twisted.web's hooks ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.transport is not None and not self._flooded:
            self._watch_header_block()

    def _requestReceived(self, event: h2.events.RequestReceived) -> None:
        super()._requestReceived(event)
        if event.stream_ended is not None:
            return  # no body to wait for
        limits = self._limits()
        if limits is not None and limits.body_min_rate:
            self._body_deadlines[event.stream_id] = self._now() + limits.header_timeout
            self._arm_body()

    def _requestDataReceived(self, event: h2.events.DataReceived) -> None:
        deadline = self._body_deadlines.get(event.stream_id)
        limits = self._limits()
        if deadline is not None and limits is not None and limits.body_min_rate:
            self._body_deadlines[event.stream_id] = min(
                deadline + event.flow_controlled_length / limits.body_min_rate,
                self._now() + limits.header_timeout,
            )
        super()._requestDataReceived(event)

    def _requestEnded(self, event: h2.events.StreamEnded) -> None:
        if self._body_deadlines:
            self._body_deadlines.pop(event.stream_id, None)
        super()._requestEnded(event)

    def _requestDone(self, streamID: int) -> None:
        if self._body_deadlines:
            self._body_deadlines.pop(streamID, None)
        super()._requestDone(streamID)

    def connectionLost(
        self,
        reason: Failure = Failure(ConnectionLost()),  # noqa: B008
        _cancelTimeouts: bool = True,
    ) -> None:
        self._stop_header_timer()
        self._body_deadlines.clear()
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.cancel()
        self._body_timer = None
        super().connectionLost(reason, _cancelTimeouts)
        lost(self, self._reactor)

    # -- the header block ---------------------------------------------------------

    def _now(self) -> float:
        seconds: float = self._reactor.seconds()
        return seconds

    def _header_block_open(self) -> bool:
        """Is a header block (or the preface) partly received?"""
        buffer: Any = self.conn.incoming_buffer
        if buffer._preamble_len or buffer._headers_buffer:
            return True
        pending = buffer._data
        if not pending:
            return False
        return len(pending) < _FRAME_HEADER or pending[3] in _HEADER_FRAME_TYPES

    def _watch_header_block(self) -> None:
        source = self._limits_source
        if source is None or source.limits is None:
            return
        if not self._header_block_open():
            if self._header_timer is not None:
                self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self._reactor.callLater(
                source.limits.header_timeout, self._header_timed_out
            )

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None and self._header_timer.active():
            self._header_timer.cancel()
        self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        limits = self._limits()
        LIMIT_HITS.labels(limit="client_header_timeout").inc()
        log.info(
            "HTTP/2 client {peer} too slow sending a header block (limit: {limit:g} s); closing",
            peer=peer_text(self.transport),
            limit=0.0 if limits is None else limits.header_timeout,
        )
        if self.transport is None:
            return
        try:
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass  # already closed in h2's view: just drop the connection
        self._terminate(Failure(ConnectionLost("HTTP/2 header block too slow")))

    # -- request bodies -------------------------------------------------------------

    def _arm_body(self) -> None:
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.cancel()
        self._body_timer = None
        if self._body_deadlines:
            delay = max(0.0, min(self._body_deadlines.values()) - self._now())
            self._body_timer = self._reactor.callLater(delay, self._check_bodies)

    def _check_bodies(self) -> None:
        self._body_timer = None
        limits = self._limits()
        now = self._now()
        for sid, deadline in list(self._body_deadlines.items()):
            if deadline > now:
                continue
            if limits is None or not limits.body_min_rate:
                del self._body_deadlines[sid]
            elif self._client_blocked(sid):
                # The service stopped taking the body, not the client.
                self._body_deadlines[sid] = now + limits.header_timeout
            else:
                del self._body_deadlines[sid]
                self._body_too_slow(sid, limits)
        self._arm_body()

    def _client_blocked(self, sid: int) -> bool:
        """Could the client not send on stream C{sid} (paused, or no window)?"""
        stream: Any = self.streams.get(sid)
        if stream is None or not stream.producing:
            return True
        h2_stream = self.conn.streams.get(sid)
        if h2_stream is None:
            return True
        return (
            self.conn.inbound_flow_control_window <= 0 or h2_stream.inbound_flow_control_window <= 0
        )

    def _body_too_slow(self, sid: int, limits: ClientLimits) -> None:
        stream: Any = self.streams.get(sid)
        request: Any = getattr(stream, "_request", None)
        LIMIT_HITS.labels(limit="client_body_min_rate").inc()
        log.info(
            "HTTP/2 client {peer} too slow sending the body of stream {sid}"
            " (at least {rate} bytes/s after {limit:g} s)",
            peer=peer_text(self.transport),
            sid=sid,
            rate=limits.body_min_rate,
            limit=limits.header_timeout,
        )
        if request is None or stream is None:
            return
        if request.startedWriting or not hasattr(request, "_respond_error"):
            stream.abortConnection()
            return
        # The 408 page, then the stream is reset: the rest of the body is not
        # wanted (RFC 9113 section 8.1: a complete response, then NO_ERROR).
        cleanup = self._streamCleanupCallbacks.get(sid)
        if cleanup is not None:
            cleanup.addCallback(self._reset_if_open)
        request._respond_error(408, "Request timeout", "The request was not sent in time.")

    def _reset_if_open(self, sid: int) -> int:
        h2_stream = self.conn.streams.get(sid)
        if h2_stream is not None and not h2_stream.closed and self.transport is not None:
            self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.NO_ERROR)
            self._tryToWriteControlData()
        return sid
