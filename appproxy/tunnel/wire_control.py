"""
The tunnel's HTTP/2 connection's control frames and stream bookkeeping
(RFC 9113): SETTINGS (and their acknowledgement, which applies ours),
PING, GOAWAY, RST_STREAM, WINDOW_UPDATE, PRIORITY, and what a stream
error or the end of a stream does.  L{appproxy.tunnel.wire_receive}
parses the frames and handles DATA and header blocks.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    Event,
    PingAckReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    SettingsAcknowledged,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import (
    FlowControlError,
    FrameDataMissingError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
)
from h2.settings import SettingCodes

from appproxy.tunnel.wire import (
    ACK,
    CONTINUATION,
    GOAWAY,
    MAX_WINDOW,
    PING,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ACK_FRAME,
    WINDOW_UPDATE,
    parse_goaway,
    parse_priority,
    parse_settings,
    parse_u32,
    ping_frame,
    rst_stream_frame,
    window_update_frame,
)
from appproxy.tunnel.wire_send import WireSender
from appproxy.tunnel.wire_stream import (
    CLOSED,
    ENDED,
    HALF_CLOSED_REMOTE,
    OPEN,
    RECEIVED_RESET,
    SENT_RESET,
    WireStream,
)

_CODES = {int(code): code for code in ErrorCodes}
Priority = tuple[int, bool, int]


def _error_code(code: int) -> ErrorCodes | int:
    return _CODES.get(code, code)


class WireControl(WireSender):
    """Control frames, and how streams end."""

    __slots__ = ()

    # -- flow control (the API) -----------------------------------------------

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        if stream_id <= 0:
            raise ValueError(f"Stream ID {stream_id} is not valid for acknowledge_received_data")
        if acknowledged_size < 0:
            raise ValueError("Cannot acknowledge negative data")
        increment = self.inbound.process(acknowledged_size)
        if increment:
            self._out.append(window_update_frame(0, increment))
        stream = self.streams.get(stream_id)
        if stream is None:
            # Closed: nothing to reopen; never opened: an error.
            if (stream_id & 1) == self.client_side:
                highest = self.highest_outbound_stream_id
            else:
                highest = self.highest_inbound_stream_id
            if stream_id > highest:
                raise NoSuchStreamError(stream_id)
        elif stream.state is not HALF_CLOSED_REMOTE:
            # No window to reopen once the peer has ended the stream.
            increment = stream.inbound.process(acknowledged_size)
            if increment:
                self._out.append(window_update_frame(stream_id, increment))

    def increment_flow_control_window(self, increment: int, stream_id: int | None = None) -> None:
        if not 1 <= increment <= MAX_WINDOW:
            raise ValueError(f"Flow control increment must be between 1 and {MAX_WINDOW}")
        if self._dead:
            raise ProtocolError("The connection is closed (GOAWAY)")
        if not stream_id:
            self.inbound.opened(increment)
            self._out.append(window_update_frame(0, increment))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            raise self._missing(stream_id)
        stream.inbound.opened(increment)
        self._out.append(window_update_frame(stream_id, increment))

    # -- streams ending -------------------------------------------------------

    def _end_remote(self, stream: WireStream) -> None:
        if stream.state is OPEN:
            stream.state = HALF_CLOSED_REMOTE
        else:
            stream.state = CLOSED
            del self.streams[stream.stream_id]
            self._forget(stream.stream_id, ENDED)

    def _reset_by_us(self, stream: WireStream, code: ErrorCodes) -> StreamReset:
        """A stream error (RFC 9113 section 5.4.2) on an open stream."""
        sid = stream.stream_id
        del self.streams[sid]
        stream.state = CLOSED
        self._out.append(rst_stream_frame(sid, code))
        self._forget(sid, SENT_RESET)
        return StreamReset(stream_id=sid, error_code=code, remote_reset=False)

    def _closed_how(self, sid: int) -> int:
        """How stream C{sid}, not open, closed (0: forgotten); idle: a connection error."""
        error = self._missing(sid)
        if not isinstance(error, StreamClosedError):
            raise error  # NoSuchStreamError: a connection error PROTOCOL_ERROR (5.1)
        return self._closed_streams.get(sid, 0)

    # -- control frames --------------------------------------------------------

    @staticmethod
    def _priority_event(sid: int, priority: Priority) -> PriorityUpdated:
        updated = PriorityUpdated()
        updated.stream_id = sid
        updated.depends_on, updated.exclusive, updated.weight = priority
        return updated

    def _control(
        self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]
    ) -> None:
        if kind == WINDOW_UPDATE:
            self._window_update(sid, parse_u32(payload) & MAX_WINDOW, events)
        elif kind == RST_STREAM:
            if not sid:
                raise ProtocolError("RST_STREAM frame on stream 0")
            code = parse_u32(payload)
            stream = self.streams.pop(sid, None)
            if stream is None:
                self._closed_how(sid)  # ignored once closed
                return
            stream.state = CLOSED
            self._forget(sid, RECEIVED_RESET)
            events.append(
                StreamReset(stream_id=sid, error_code=_error_code(code), remote_reset=True)
            )
        elif kind == SETTINGS:
            if sid:
                raise ProtocolError("SETTINGS frame on a stream")
            if flags & ACK:
                if payload:
                    raise FrameDataMissingError("SETTINGS acknowledgement with a payload")
                events.append(self._settings_acknowledged())
            else:
                self._settings_received(parse_settings(payload), events)
        elif kind == PING:
            if sid:
                raise ProtocolError("PING frame on a stream")
            if len(payload) != 8:
                raise FrameDataMissingError("PING frame payload must be 8 octets")
            if flags & ACK:
                events.append(PingAckReceived(ping_data=payload))
            else:
                events.append(PingReceived(ping_data=payload))
                self._out.append(ping_frame(payload, ack=True))
        elif kind == PRIORITY:
            self._priority(sid, payload, events)
        elif kind == GOAWAY:
            if sid:
                raise ProtocolError("GOAWAY frame on a stream")
            last, code, additional = parse_goaway(payload)
            self._gone = True  # the streams up to last may finish (6.8)
            terminated = ConnectionTerminated()
            terminated.error_code = _error_code(code)
            terminated.last_stream_id = last
            terminated.additional_data = additional or None
            events.append(terminated)
        elif kind == PUSH_PROMISE:
            raise ProtocolError("Received pushed stream")
        elif kind == CONTINUATION:
            if sid not in self.streams:
                self._closed_how(sid)  # idle: NoSuchStreamError, as h2
            raise ProtocolError("Received unexpected CONTINUATION frame")
        # Any other type is an extension: ignored (RFC 9113 section 4.1).

    def _window_update(self, sid: int, increment: int, events: list[Event]) -> None:
        if not sid:
            if not increment:
                raise ProtocolError("WINDOW_UPDATE with a zero increment")
            window = self.outbound_flow_control_window + increment
            if window > MAX_WINDOW:
                raise FlowControlError(f"Flow control window mustn't exceed {MAX_WINDOW}")
            self.outbound_flow_control_window = window
            events.append(WindowUpdated(stream_id=0, delta=increment))
            return
        stream = self.streams.get(sid)
        if stream is None:
            self._closed_how(sid)  # ignored once closed
            return
        if not increment:
            events.append(self._reset_by_us(stream, ErrorCodes.PROTOCOL_ERROR))
            return
        window = stream.outbound_window + increment
        if window > MAX_WINDOW:
            events.append(self._reset_by_us(stream, ErrorCodes.FLOW_CONTROL_ERROR))
            return
        stream.outbound_window = window
        events.append(WindowUpdated(stream_id=sid, delta=increment))

    def _priority(self, sid: int, payload: bytes, events: list[Event]) -> None:
        """PRIORITY: accepted and ignored, but for its errors (stream errors)."""
        if not sid:
            raise ProtocolError("PRIORITY frame on stream 0")
        if len(payload) == 5:
            priority = parse_priority(payload)
            if priority[0] != sid:
                events.append(self._priority_event(sid, priority))
                return
            code = ErrorCodes.PROTOCOL_ERROR
        else:
            code = ErrorCodes.FRAME_SIZE_ERROR
        stream = self.streams.get(sid)
        if stream is not None:
            events.append(self._reset_by_us(stream, code))
        elif self._closed_how(sid) not in (0, SENT_RESET):  # after our RST_STREAM: ignored
            self._out.append(rst_stream_frame(sid, code))

    def _settings_received(self, settings: dict[int, int], events: list[Event]) -> None:
        remote = self.remote_settings
        for code, value in settings.items():
            remote.validate_received_setting(code, value)
        remote.update(settings)
        events.append(RemoteSettingsChanged.from_settings(remote, settings))
        changes = remote.acknowledge()
        change = changes.get(SettingCodes.INITIAL_WINDOW_SIZE)
        if change is not None:
            delta = change.new_value - (change.original_value or 0)
            for stream in self.streams.values():
                window = stream.outbound_window + delta
                if window > MAX_WINDOW:
                    raise FlowControlError(f"Flow control window mustn't exceed {MAX_WINDOW}")
                stream.outbound_window = window
            self.remote_initial_window = change.new_value
        change = changes.get(SettingCodes.HEADER_TABLE_SIZE)
        if change is not None:
            self.encoder.header_table_size = change.new_value
        change = changes.get(SettingCodes.MAX_FRAME_SIZE)
        if change is not None:
            self.max_outbound_frame_size = change.new_value
        change = changes.get(SettingCodes.MAX_CONCURRENT_STREAMS)
        if change is not None:
            self.remote_max_streams = change.new_value
        self._out.append(SETTINGS_ACK_FRAME)

    def _settings_acknowledged(self) -> SettingsAcknowledged:
        """The peer acknowledged our oldest SETTINGS frame: its values (only) in force."""
        if self._settings_sent:
            self.local_settings.update(self._settings_sent.popleft())
        changes = self.local_settings.acknowledge()
        change = changes.get(SettingCodes.INITIAL_WINDOW_SIZE)
        if change is not None:
            delta = change.new_value - (change.original_value or 0)
            for stream in self.streams.values():
                window = stream.inbound
                maximum = window.maximum + delta
                window.opened(delta)
                window.maximum = maximum
            self.local_initial_window = change.new_value
        change = changes.get(SettingCodes.MAX_HEADER_LIST_SIZE)
        if change is not None:
            self.decoder.max_header_list_size = change.new_value
        change = changes.get(SettingCodes.MAX_FRAME_SIZE)
        if change is not None:
            self.max_inbound_frame_size = change.new_value
        change = changes.get(SettingCodes.HEADER_TABLE_SIZE)
        if change is not None:
            self.decoder.max_allowed_table_size = change.new_value
        change = changes.get(SettingCodes.MAX_CONCURRENT_STREAMS)
        if change is not None:
            self.local_max_streams = change.new_value
        acknowledged = SettingsAcknowledged()
        acknowledged.changed_settings = changes
        return acknowledged
