"""
The sending half of the tunnel's HTTP/2 connection (RFC 9113): its state
and the calls that queue frames (the subset of h2's C{H2Connection} API the
tunnel uses, with h2's exceptions).  The receiving half,
L{appproxy.tunnel.wire_receive}, completes it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.exceptions import (
    FlowControlError,
    FrameTooLargeError,
    NoAvailableStreamIDError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
    TooManyStreamsError,
)
from h2.settings import SettingCodes, Settings

from appproxy.tunnel.fields import TunnelEncoder
from appproxy.tunnel.received import TunnelDecoder
from appproxy.tunnel.wire import (
    DATA,
    END_STREAM,
    HEAD,
    MAX_WINDOW,
    PREFACE,
    data_frame,
    goaway_frame,
    headers_frames,
    ping_frame,
    priority_field,
    rst_stream_frame,
    settings_frame,
)
from appproxy.tunnel.wire_stream import (
    CLOSED,
    ENDED,
    HALF_CLOSED_LOCAL,
    OPEN,
    SENT_RESET,
    Window,
    WireStream,
)

#: h2's default SETTINGS_MAX_HEADER_LIST_SIZE, ours until we send another.
DEFAULT_MAX_HEADER_LIST_SIZE = 1 << 16
#: h2's default SETTINGS_MAX_CONCURRENT_STREAMS.
DEFAULT_MAX_CONCURRENT_STREAMS = 100


class WireSender:
    """
    The connection's state, and what we send.

    @ivar streams: the open and half-closed streams by id.
    @ivar _closed_streams: how the last L{MAX_CLOSED_STREAMS} closed
        streams closed (L{ENDED}, L{SENT_RESET}, L{RECEIVED_RESET}).
    @ivar _gone: a GOAWAY was sent or received: no new stream is opened, no
        SETTINGS sent; the streams already open may finish (RFC 9113
        section 6.8).
    @ivar _dead: a connection error: nothing more is sent, only a GOAWAY
        is received.
    @ivar _goaway_last: the last stream id of the GOAWAY we sent: the peer's
        streams above it are refused.
    """

    __slots__ = (
        "_block_flags",
        "_block_parts",
        "_block_priority",
        "_block_size",
        "_block_stream",
        "_closed_streams",
        "_dead",
        "_goaway_last",
        "_gone",
        "_need",
        "_out",
        "_pending",
        "_pending_size",
        "_preface",
        "_settings_seen",
        "_settings_sent",
        "client_side",
        "config",
        "decoder",
        "encoder",
        "highest_inbound_stream_id",
        "highest_outbound_stream_id",
        "inbound",
        "local_initial_window",
        "local_max_streams",
        "local_settings",
        "max_inbound_frame_size",
        "max_outbound_frame_size",
        "outbound_flow_control_window",
        "remote_initial_window",
        "remote_max_streams",
        "remote_settings",
        "streams",
    )

    MAX_CLOSED_STREAMS = 4096

    def __init__(self, client_side: bool) -> None:
        self.client_side = client_side
        self.config = H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.streams: dict[int, WireStream] = {}
        self.highest_inbound_stream_id = 0
        self.highest_outbound_stream_id = 0
        self.encoder = TunnelEncoder()
        self.decoder = TunnelDecoder(DEFAULT_MAX_HEADER_LIST_SIZE)
        self.local_settings = Settings(
            client=client_side,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: DEFAULT_MAX_CONCURRENT_STREAMS,
                SettingCodes.MAX_HEADER_LIST_SIZE: DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.remote_settings = Settings(client=not client_side)
        self.decoder.max_allowed_table_size = self.local_settings.header_table_size
        self.outbound_flow_control_window = self.remote_settings.initial_window_size
        self.inbound = Window(self.local_settings.initial_window_size)
        self.max_outbound_frame_size = self.remote_settings.max_frame_size
        self.max_inbound_frame_size = self.local_settings.max_frame_size
        self.local_initial_window = self.local_settings.initial_window_size
        self.local_max_streams = DEFAULT_MAX_CONCURRENT_STREAMS
        self.remote_initial_window = self.remote_settings.initial_window_size
        self.remote_max_streams = self.remote_settings.max_concurrent_streams
        self._closed_streams: OrderedDict[int, int] = OrderedDict()
        self._out: list[bytes] = []
        self._gone = False
        self._dead = False
        self._goaway_last = MAX_WINDOW
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._need = 0
        self._preface = b"" if client_side else PREFACE
        #: True once the peer's SETTINGS came; None once gone (see _check_state).
        self._settings_seen: bool | None = False
        self._block_stream = 0
        self._block_flags = 0
        self._block_parts: list[bytes] = []
        self._block_size = 0
        self._block_priority: tuple[int, bool, int] | None = None
        #: Each SETTINGS frame we sent and the peer has not acknowledged yet,
        #: applied ACK by ACK (RFC 9113 section 6.5.3).
        self._settings_sent: deque[dict[Any, int]] = deque()

    # -- bookkeeping ---------------------------------------------------------

    def _forget(self, stream_id: int, how: int) -> None:
        """Remember how C{stream_id} closed (the last few only)."""
        closed = self._closed_streams
        closed[stream_id] = how
        if len(closed) > self.MAX_CLOSED_STREAMS:
            closed.popitem(last=False)

    def _missing(self, stream_id: int) -> NoSuchStreamError:
        """The error for a stream not open: closed, or never opened."""
        outbound = (stream_id & 1) == self.client_side
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id > highest:
            return NoSuchStreamError(stream_id)
        return StreamClosedError(stream_id)

    def _end_local(self, stream: WireStream) -> None:
        if stream.state is OPEN:
            stream.state = HALF_CLOSED_LOCAL
        else:
            stream.state = CLOSED
            del self.streams[stream.stream_id]
            self._forget(stream.stream_id, ENDED)

    def _count(self, outbound: bool) -> int:
        # A client opens every stream (push is refused), a server none.
        return len(self.streams) if outbound == self.client_side else 0

    @property
    def open_outbound_streams(self) -> int:
        return self._count(True)

    @property
    def open_inbound_streams(self) -> int:
        return self._count(False)

    @property
    def inbound_flow_control_window(self) -> int:
        return self.inbound.current

    # -- the API -----------------------------------------------------------

    def initiate_connection(self) -> None:
        settings = settings_frame(self.local_settings.items())
        self._out.append(PREFACE + settings if self.client_side else settings)
        self._settings_sent.append({})  # values already in force

    def update_settings(self, new_settings: dict[Any, int]) -> None:
        if self._gone:
            raise ProtocolError("The connection is closed (GOAWAY)")
        Settings(self.client_side, new_settings)  # h2's checks of the values
        self._settings_sent.append(dict(new_settings))
        self._out.append(settings_frame(new_settings.items()))

    def get_next_available_stream_id(self) -> int:
        highest = self.highest_outbound_stream_id
        sid = (1 if self.client_side else 2) if not highest else highest + 2
        if sid > MAX_WINDOW:
            raise NoAvailableStreamIDError("Exhausted allowed stream IDs")
        return sid

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[Any],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        fields = headers if isinstance(headers, list) else list(headers)
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self._open_outbound(stream_id)
            for name, value in fields:
                if name == b":method":
                    # Its response's content-length promises no body.
                    stream.head = value == b"HEAD"
                    break
        elif self._dead:
            raise ProtocolError("The connection is closed (GOAWAY)")
        elif stream.state is HALF_CLOSED_LOCAL:
            raise ProtocolError(f"Stream {stream_id} is half-closed (local)")
        elif fields and fields[0][0] == b":status" and fields[0][1][:1] == b"1":
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses")
            if stream.sent_headers:
                raise ProtocolError("Informational response after final response")
        elif not stream.sent_headers:
            stream.sent_headers = True
        elif not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set")
        priority = b""
        if (
            priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
        ):
            priority = priority_field(
                stream_id, priority_weight, priority_depends_on, priority_exclusive
            )
        block = self.encoder.encode(fields)
        self._out.append(
            headers_frames(stream_id, block, end_stream, self.max_outbound_frame_size, priority)
        )
        if end_stream:
            self._end_local(stream)

    def _open_outbound(self, stream_id: int) -> WireStream:
        # In h2's order: the peer's limit, the connection's state, the id.
        limit = self.remote_max_streams
        if self.client_side and len(self.streams) + 1 > limit:
            raise TooManyStreamsError(f"Max outbound streams is {limit}")
        if self._gone:
            raise ProtocolError("The connection is closed (GOAWAY)")
        if not self.client_side or not stream_id & 1 or stream_id <= 0:
            if stream_id in self._closed_streams or stream_id <= self.highest_inbound_stream_id:
                raise StreamClosedError(stream_id)
            raise ProtocolError(f"Invalid stream ID {stream_id}")
        if stream_id <= self.highest_outbound_stream_id:
            if stream_id in self._closed_streams:
                raise StreamClosedError(stream_id)
            raise StreamIDTooLowError(stream_id, self.highest_outbound_stream_id)
        if stream_id > MAX_WINDOW:
            raise ProtocolError(f"Invalid stream ID {stream_id}")
        self.highest_outbound_stream_id = stream_id
        stream = WireStream(stream_id, OPEN, self.remote_initial_window, self.local_initial_window)
        stream.sent_headers = True
        self.streams[stream_id] = stream
        return stream

    def send_data(
        self, stream_id: int, data: bytes, end_stream: bool = False, pad_length: int | None = None
    ) -> None:
        if self._dead:
            raise ProtocolError("The connection is closed (GOAWAY)")
        stream = self.streams.get(stream_id)
        if stream is None:
            raise self._missing(stream_id)
        if stream.state is HALF_CLOSED_LOCAL:
            raise ProtocolError(f"Stream {stream_id} is half-closed (local)")
        size = len(data)
        if pad_length is not None:
            if not isinstance(pad_length, int) or not 0 <= pad_length <= 255:
                raise ValueError("pad_length must be an int between 0 and 255")
            size += pad_length + 1
        window = self.outbound_flow_control_window
        if stream.outbound_window < window:
            window = stream.outbound_window
        if size > window:
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(
                f"Cannot send frame size {size}, max frame size is {self.max_outbound_frame_size}"
            )
        if pad_length is None:
            self._out.append(
                HEAD.pack(size << 8 | DATA, END_STREAM if end_stream else 0, stream_id)
            )
            if size:
                self._out.append(data)
        else:
            self._out.append(data_frame(stream_id, bytes(data), end_stream, pad_length))
        self.outbound_flow_control_window -= size
        stream.outbound_window -= size
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def local_flow_control_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise self._missing(stream_id)
        window = self.outbound_flow_control_window
        return stream.outbound_window if stream.outbound_window < window else window

    def remote_flow_control_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise self._missing(stream_id)
        return min(self.inbound.current, stream.inbound.current)

    def reset_stream(self, stream_id: int, error_code: ErrorCodes | int = 0) -> None:
        if self._dead:
            raise ProtocolError("The connection is closed (GOAWAY)")
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            raise self._missing(stream_id)
        stream.state = CLOSED
        self._out.append(rst_stream_frame(stream_id, error_code))
        self._forget(stream_id, SENT_RESET)

    def ping(self, opaque_data: bytes) -> None:
        if not isinstance(opaque_data, bytes) or len(opaque_data) != 8:
            raise ValueError(f"Invalid value for ping data: {opaque_data!r}")
        if self._dead:
            raise ProtocolError("The connection is closed (GOAWAY)")
        self._out.append(ping_frame(opaque_data))

    def close_connection(
        self,
        error_code: ErrorCodes | int = 0,
        additional_data: bytes | None = None,
        last_stream_id: int | None = None,
    ) -> None:
        if last_stream_id is None:
            last_stream_id = self.highest_inbound_stream_id
        self._out.append(goaway_frame(last_stream_id, error_code, additional_data or b""))
        self._gone = True
        self._goaway_last = last_stream_id

    def data_to_send(self, amount: int | None = None) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if amount is not None and len(data) > amount:
            out.append(data[amount:])
            data = data[:amount]
        return bytes(data) if type(data) is not bytes else data

    def clear_outbound_data_buffer(self) -> None:
        self._out.clear()
