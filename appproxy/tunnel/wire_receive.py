"""
The receiving half of the tunnel's HTTP/2 connection (RFC 9113): frames
parsed from the received bytes with C{struct} (no object per frame), each
answered as RFC 9113 requires, and h2's events emitted (the same events,
in the same order, as h2's C{H2Connection} for what a conformant peer
sends).  Errors are h2's exceptions: a L{ProtocolError} (and its
subclasses) out of L{WireConnection.receive_data} is a connection error, its
GOAWAY queued; a stream error resets that stream only.
"""

from __future__ import annotations

from typing import Any, cast

from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    TrailersReceived,
)
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameTooLargeError,
    InvalidBodyLengthError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from hpack.exceptions import HPACKError, OversizedHeaderListError

from appproxy.tunnel.fields import Field
from appproxy.tunnel.received import (
    REQUEST_BLOCK,
    RESPONSE_BLOCK,
    TRAILER_BLOCK,
    received_fields,
    received_problem,
)
from appproxy.tunnel.wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEAD,
    HEADERS,
    PADDED,
    PRIORITY_FLAG,
    SETTINGS,
    goaway_frame,
    parse_priority,
    rst_stream_frame,
    unpadded,
    window_update_frame,
)
from appproxy.tunnel.wire_control import Priority, WireControl
from appproxy.tunnel.wire_stream import (
    ENDED,
    HALF_CLOSED_REMOTE,
    OPEN,
    SENT_RESET,
    WireStream,
)

#: The most CONTINUATION frames one header block may take (h2's limit).
CONTINUATION_LIMIT = 64


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The block's content-length (h2's checks: digits only, all equal)."""
    length = -1
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise ProtocolError(f"Invalid content-length header: {value!r}")
            parsed = int(value)
            if length >= 0 and parsed != length:
                raise ProtocolError(f"Conflicting content-length headers: {length} and {parsed}")
            length = parsed
    return length


class WireConnection(WireControl):
    """The tunnel's HTTP/2 connection, both halves."""

    __slots__ = ()

    def receive_data(self, data: bytes) -> list[Event]:
        if type(data) is not bytes:
            data = bytes(data)
        if self._preface:
            expected = self._preface
            seen = len(data) if len(data) < len(expected) else len(expected)
            if data[:seen] != expected[:seen]:
                raise ProtocolError("Invalid HTTP/2 preamble.")
            self._preface = expected[seen:]
            data = data[seen:]
        if self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._need:
                return []
            data = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        events: list[Event] = []
        unpack = HEAD.unpack_from
        end = len(data)
        pos = 0
        need = 0
        try:
            while True:
                if end - pos < 9:
                    need = 9
                    break
                word, flags, sid = unpack(data, pos)
                length = word >> 8
                if length > self.max_inbound_frame_size:
                    raise FrameTooLargeError(f"Received a frame of {length} octets: too large")
                start = pos + 9
                if end - start < length:
                    need = 9 + length
                    break
                kind = word & 0xFF
                sid &= 0x7FFFFFFF
                pos = start + length
                payload = data[start:pos]
                if self._settings_seen is not True:
                    self._check_state(kind, flags)
                if self._block_stream:
                    self._continuation(kind, flags, sid, payload, events)
                elif kind == DATA:
                    self._data(flags, sid, payload, events)
                elif kind == HEADERS:
                    self._headers(flags, sid, payload, events)
                else:
                    self._control(kind, flags, sid, payload, events)
        except ProtocolError as e:
            self._out.append(goaway_frame(self.highest_inbound_stream_id, e.error_code))
            self._gone = self._dead = True
            self._settings_seen = None
            raise
        if pos < end:
            rest = data[pos:]
            self._pending = [rest]
            self._pending_size = len(rest)
            self._need = need
        return events

    def _check_state(self, kind: int, flags: int) -> None:
        """The first frame (SETTINGS), and nothing but GOAWAY after a connection error."""
        if self._dead:
            self._settings_seen = None
            if kind <= CONTINUATION and kind != GOAWAY:
                raise ProtocolError("Received a frame after GOAWAY")
        elif kind != SETTINGS or flags & ACK:
            raise ProtocolError("The peer's connection preface must start with SETTINGS")
        else:
            self._settings_seen = True

    # -- DATA ------------------------------------------------------------------

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if not sid:
            raise ProtocolError("DATA frame on stream 0")
        length = len(payload)
        data = unpadded(payload) if flags & PADDED else payload
        inbound = self.inbound
        inbound.current -= length
        if inbound.current < 0:
            raise FlowControlError("Flow control window shrunk below 0")
        stream = self.streams.get(sid)
        if stream is None or stream.state is HALF_CLOSED_REMOTE:
            self._data_not_open(sid, stream, length, events)
            return
        if not stream.final_headers:
            raise ProtocolError(f"DATA before the response's HEADERS on stream {sid}")
        window = stream.inbound
        window.current -= length
        if window.current < 0:
            raise FlowControlError("Flow control window shrunk below 0")
        if stream.expected_length >= 0:
            got = stream.received_length + len(data)
            stream.received_length = got
            if got > stream.expected_length or (
                flags & END_STREAM and got != stream.expected_length
            ):
                raise InvalidBodyLengthError(stream.expected_length, got)
        if flags & END_STREAM:
            ended = StreamEnded(stream_id=sid)
            events.append(
                DataReceived(
                    stream_id=sid, data=data, flow_controlled_length=length, stream_ended=ended
                )
            )
            events.append(ended)
            self._end_remote(stream)
        else:
            events.append(DataReceived(stream_id=sid, data=data, flow_controlled_length=length))

    def _data_not_open(
        self, sid: int, stream: WireStream | None, length: int, events: list[Event]
    ) -> None:
        """
        DATA on a stream the peer has ended (a stream error, STREAM_CLOSED)
        or one that is closed: its octets still count against the
        connection's window, which is reopened for them.
        """
        how = self._closed_how(sid) if stream is None else 0
        if how == ENDED:
            raise StreamClosedError(sid)
        increment = self.inbound.process(length)
        if increment:
            self._out.append(window_update_frame(0, increment))
        if stream is not None:
            events.append(self._reset_by_us(stream, ErrorCodes.STREAM_CLOSED))
        elif how != SENT_RESET:  # after our RST_STREAM: ignored (RFC 9113 section 5.1)
            self._out.append(rst_stream_frame(sid, ErrorCodes.STREAM_CLOSED))

    # -- HEADERS and CONTINUATION -------------------------------------------

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if not sid:
            raise ProtocolError("HEADERS frame on stream 0")
        if flags & PADDED:
            payload = unpadded(payload)
        priority = None
        if flags & PRIORITY_FLAG:
            priority = parse_priority(payload)
            if priority[0] == sid:
                raise ProtocolError(f"Stream {sid} may not depend on itself")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._block(sid, flags, payload, priority, events)
            return
        self._block_stream = sid
        self._block_flags = flags
        self._block_parts = [payload]
        self._block_size = len(payload)
        self._block_priority = priority

    def _continuation(
        self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]
    ) -> None:
        if kind != CONTINUATION or sid != self._block_stream:
            raise ProtocolError("Invalid frame during header block.")
        parts = self._block_parts
        parts.append(payload)
        self._block_size += len(payload)
        if len(parts) > CONTINUATION_LIMIT:
            raise ProtocolError("Too many continuation frames received.")
        if self._block_size > 4 * self.decoder.max_header_list_size + self.max_inbound_frame_size:
            raise DenialOfServiceError("Header block too large")
        if flags & END_HEADERS:
            self._block_stream = 0
            self._block_parts = []
            self._block(sid, self._block_flags, b"".join(parts), self._block_priority, events)

    def _block(
        self, sid: int, flags: int, block: bytes, priority: Priority | None, events: list[Event]
    ) -> None:
        """A complete header block: decoded (always: HPACK's state), then checked."""
        try:
            headers = cast(list[Field], self.decoder.decode(block, raw=True))
        except OversizedHeaderListError as e:
            raise DenialOfServiceError(f"Oversized header block: {e}") from e
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            error = ProtocolError(f"Error decoding header block: {e}")
            error.error_code = ErrorCodes.COMPRESSION_ERROR  # RFC 9113 section 4.3
            raise error from e
        end = flags & END_STREAM
        stream = self.streams.get(sid)
        event: RequestReceived | ResponseReceived | TrailersReceived | InformationalResponseReceived
        if stream is None:
            if (sid & 1) == self.client_side or sid <= self.highest_inbound_stream_id:
                how = self._closed_how(sid)
                if how == ENDED:
                    raise StreamClosedError(sid)
                if not how:
                    if (sid & 1) != self.client_side:  # implicitly closed (5.1.1)
                        raise StreamIDTooLowError(sid, self.highest_inbound_stream_id)
                    raise ProtocolError(f"HEADERS on closed stream {sid}")
                if how != SENT_RESET:  # after our RST_STREAM: ignored (5.1)
                    self._out.append(rst_stream_frame(sid, ErrorCodes.STREAM_CLOSED))
                return
            if self.client_side:
                raise ProtocolError("Received pushed stream")
            self.highest_inbound_stream_id = sid
            if len(self.streams) >= self.local_max_streams or sid > self._goaway_last:
                self._out.append(rst_stream_frame(sid, ErrorCodes.REFUSED_STREAM))
                self._forget(sid, SENT_RESET)
                return
            stream = WireStream(
                sid,
                HALF_CLOSED_REMOTE if end else OPEN,
                self.remote_initial_window,
                self.local_initial_window,
            )
            stream.final_headers = True
            self.streams[sid] = stream
            kind = REQUEST_BLOCK
            event = RequestReceived(stream_id=sid)
        elif stream.state is HALF_CLOSED_REMOTE:
            events.append(self._reset_by_us(stream, ErrorCodes.STREAM_CLOSED))
            return
        elif stream.final_headers:
            if not end:
                raise ProtocolError("Trailers must have END_STREAM set")
            kind = TRAILER_BLOCK
            event = TrailersReceived(stream_id=sid)
            self._end_remote(stream)
        else:
            kind = RESPONSE_BLOCK
            informational = False
            for name, value in headers:
                if name == b":status":
                    informational = value[:1] == b"1"
                    break
                if name[:1] != b":":
                    break
            if informational:
                if end:
                    raise ProtocolError("Cannot set END_STREAM on informational responses")
                event = InformationalResponseReceived(stream_id=sid)
            else:
                stream.final_headers = True
                event = ResponseReceived(stream_id=sid)
                if end:
                    self._end_remote(stream)
        names = [field[0] for field in headers]
        if b"cookie" in names:
            headers = received_fields(headers)
            names = [field[0] for field in headers]
        problem = received_problem(headers, kind, names)
        if problem is not None:
            raise ProtocolError(f"Received an invalid header block: {problem}")
        if stream.head:
            stream.expected_length = 0
        elif b"content-length" in names:
            stream.expected_length = _content_length(headers)
        else:
            stream.expected_length = -1
        event.headers = cast(list[Any], headers)
        events.append(event)
        if end:
            ended = StreamEnded(stream_id=sid)
            event.stream_ended = ended  # type: ignore[union-attr]
            events.append(ended)
        if priority is not None:
            updated = self._priority_event(sid, priority)
            event.priority_updated = updated
            events.append(updated)
