"""
A request's HEADERS frame received by the public HTTP/2 connection in fewer
steps.

h2 takes a received HEADERS frame through its connection's state machine,
its stream's (two transitions, each an enum-keyed look-up and a check of
the input's type), a pass over the block for an informational response,
header validation flags built for checks that are off on this connection
(L{appproxy.frontend.h2_inbound} checks the block instead), and a frame
list of its own per frame received.  L{LeanConnection} does what those
steps come to for the usual frame: a request opening a new stream (a
client's odd id, above the last), on an open connection, with h2's
discarding logger.  The same checks in the same order (the limit on open
streams, HPACK decoding, the block's own checks), the same stream made the
same way (by h2's C{_begin_new_stream}), the same state (open, or
half-closed by the client with END_STREAM; its expected content length),
the same events (C{RequestReceived}, then C{StreamEnded}, then
C{PriorityUpdated} if the frame carries priority).  Any other frame takes
h2's way.  C{tests.test_h2_requests} holds the two side by side.

It also sends nothing for a received frame that asks for nothing (h2 joins
an empty list of frames through two generators).
"""

from __future__ import annotations

from typing import Any

from h2.config import DummyLogger
from h2.connection import AllowedStreamIDs, ConnectionState, H2Connection, _decode_headers
from h2.events import Event, RequestReceived, StreamEnded
from h2.exceptions import ProtocolError, TooManyStreamsError
from h2.stream import StreamState
from h2.utilities import is_informational_response
from hyperframe.frame import HeadersFrame

from appproxy.frontend.h2_frames import lean_frames
from appproxy.frontend.h2_inbound import CheckedInbound, check_block
from appproxy.frontend.h2_outbound import LeanOutbound
from appproxy.tunnel.received import REQUEST_BLOCK

__all__ = ["LeanConnection", "lean"]

_SERVER_OPEN = ConnectionState.SERVER_OPEN
_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_IDLE = StreamState.IDLE
_CLOSED = StreamState.CLOSED
_ODD = AllowedStreamIDs.ODD


class LeanConnection(LeanOutbound):
    """L{LeanOutbound} receiving a request's HEADERS frame the short way."""

    def _receive_frame(self, frame: Any) -> list[Event]:
        if frame.__class__ is HeadersFrame:
            stream_id = frame.stream_id
            if (
                stream_id & 1
                and stream_id > self.highest_inbound_stream_id
                and self.state_machine.state is _SERVER_OPEN
                and type(self.config.logger) is DummyLogger
                and stream_id not in self.streams
            ):
                return self._receive_request(frame, stream_id)
        return super()._receive_frame(frame)

    def _receive_request(self, frame: HeadersFrame, stream_id: int) -> list[Event]:
        # h2's _receive_headers_frame, as it goes for a new stream of a
        # server's open connection (whose state it leaves as it is).
        most = self.local_settings.max_concurrent_streams
        open_now = self.open_inbound_streams  # also forgets closed streams
        if open_now + 1 > most:
            raise TooManyStreamsError(f"Max inbound streams is {most}, {open_now} open")
        headers = _decode_headers(self.decoder, frame.data)
        stream = self._begin_new_stream(stream_id, _ODD)
        try:
            return _received(self, frame, stream, headers)
        except ProtocolError:
            if is_informational_response(headers):
                # Refused by h2 before its transitions (END_STREAM on it) or
                # by them: the stream as h2 leaves it.
                machine = stream.state_machine
                machine.state = _IDLE if "END_STREAM" in frame.flags else _CLOSED
                machine.client = machine.headers_received = None
                stream._expected_content_length = None
            raise

    def _prepare_for_sending(self, frames: list[Any]) -> None:
        if frames:
            super()._prepare_for_sending(frames)


def _received(conn: LeanConnection, frame: HeadersFrame, stream: Any, headers: Any) -> list[Event]:
    """The events of a request's HEADERS frame on C{stream}, just made."""
    # The stream's transitions: IDLE -> OPEN (request_received), then
    # OPEN -> HALF_CLOSED_REMOTE (stream_half_closed) on END_STREAM.
    stream_id = frame.stream_id
    machine = stream.state_machine
    machine.client = False
    machine.headers_received = True
    machine.state = _OPEN
    event = RequestReceived(stream_id=stream_id)
    events: list[Event] = [event]
    flags = frame.flags
    if "END_STREAM" in flags:
        machine.state = _HALF_CLOSED_REMOTE
        ended = StreamEnded(stream_id=stream_id)
        event.stream_ended = ended
        events.append(ended)
    stream._initialize_content_length(headers)
    event.headers = list(headers)
    if "PRIORITY" in flags:
        _, priority_events = conn._receive_priority_frame(frame)
        event.priority_updated = priority_events[0]  # type: ignore[assignment]
        events.extend(priority_events)
    check_block(event, REQUEST_BLOCK)
    return events


def lean(conn: H2Connection) -> None:
    """
    Make C{conn} (made a L{CheckedInbound} by L{adopt}) a L{LeanConnection},
    reading frames with a L{LeanFrameBuffer}.
    """
    if type(conn) is not CheckedInbound:
        raise TypeError("only a connection adopt() made a CheckedInbound")
    lean_frames(conn.incoming_buffer)
    conn.__class__ = LeanConnection
