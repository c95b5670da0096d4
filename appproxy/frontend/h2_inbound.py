"""
The header blocks an HTTP/2 client sends, checked as h2 checks them but in
fewer steps.

twisted.web's HTTP/2 connection has h2 normalise and validate every
received header block (RFC 9113 section 8.2): a chain of generators, one
per rule, with a Python loop over every byte of every name and value, and
hpack's decoder with a debug log call per field.  The tunnel replaced both
(L{appproxy.tunnel.received}): L{adopt} gives a public connection's h2
state machine the same, so the same blocks are refused (as a protocol error
of the connection, as h2 does: the property tests of
C{tests.test_h2_inbound} hold it beside h2's own) and the same fields
reach twisted.web (C{cookie} fields joined into one, as h2 normalises).

h2 dispatches each received frame through a dict of its methods, bound
when the connection is made: about 1.3 KiB that every idle connection
keeps.  L{CheckedInbound} dispatches through one table of its class
instead (L{_FRAME_HANDLERS}; C{tests.test_h2_compact} holds it to h2's),
and makes the C{repr} of a frame for h2's trace log only when a logger
would take it (h2's default logger discards it, a DATA frame's payload
hex-encoded first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from h2.config import DummyLogger
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import Event, RequestReceived, TrailersReceived
from h2.exceptions import ProtocolError, StreamClosedError, StreamIDTooLowError
from hyperframe.frame import (
    AltSvcFrame,
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from appproxy.tunnel.fields import Field
from appproxy.tunnel.received import (
    REQUEST_BLOCK,
    TRAILER_BLOCK,
    TunnelDecoder,
    received_fields,
    received_problem,
)

if TYPE_CHECKING:
    from hyperframe.frame import Frame

__all__ = ["CheckedInbound", "adopt", "check_block"]

#: The kind of header block each event a server gets carries.
_BLOCK_KINDS = {RequestReceived: REQUEST_BLOCK, TrailersReceived: TRAILER_BLOCK}


class CheckedInbound(H2Connection):
    """
    h2's server-side state machine whose received header blocks are checked
    by L{received_problem} (h2's own checks are off: see L{adopt}); a frame
    it sends is queued without h2's two generator passes per frame.
    """

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        frames, events = super()._receive_headers_frame(frame)
        for event in events:
            kind = _BLOCK_KINDS.get(type(event))
            if kind is None:
                continue
            check_block(event, kind)
            break
        return frames, events

    def _receive_frame(self, frame: Frame) -> list[Event]:
        # h2's, dispatching through the class's table (see the module
        # docstring), the same errors handled the same way.
        events: list[Event]
        logger = self.config.logger
        if type(logger) is not DummyLogger:
            logger.trace("Received frame: %s", repr(frame))
        try:
            frames, events = _FRAME_HANDLERS[frame.__class__](self, frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        # h2's, without its two generator passes for the usual single frame.
        if len(frames) != 1:
            super()._prepare_for_sending(frames)
            return
        frame = frames[0]
        self._data_to_send += frame.serialize()
        assert frame.body_len <= self.max_outbound_frame_size


#: h2's frame dispatch table (C{H2Connection._frame_dispatch_table}), of
#: the class's methods, not each connection's bound ones.
_FRAME_HANDLERS: dict[type[Frame], Any] = {
    frame_type: getattr(CheckedInbound, name)
    for frame_type, name in (
        (HeadersFrame, "_receive_headers_frame"),
        (PushPromiseFrame, "_receive_push_promise_frame"),
        (SettingsFrame, "_receive_settings_frame"),
        (DataFrame, "_receive_data_frame"),
        (WindowUpdateFrame, "_receive_window_update_frame"),
        (PingFrame, "_receive_ping_frame"),
        (RstStreamFrame, "_receive_rst_stream_frame"),
        (PriorityFrame, "_receive_priority_frame"),
        (GoAwayFrame, "_receive_goaway_frame"),
        (ContinuationFrame, "_receive_naked_continuation"),
        (AltSvcFrame, "_receive_alt_svc_frame"),
        (ExtensionFrame, "_receive_unknown_frame"),
    )
}


def check_block(event: Any, kind: str) -> None:
    """
    Check the header block a received event carries, of C{kind}
    (L{REQUEST_BLOCK} or L{TRAILER_BLOCK}): a L{ProtocolError} if it is
    refused; C{cookie} fields joined into one.
    """
    headers: list[Field] = event.headers
    names = [field[0] for field in headers]
    if b"cookie" in names:
        headers = event.headers = received_fields(headers)
        names = [field[0] for field in headers]
    problem = received_problem(headers, kind, names)
    if problem is not None:
        raise ProtocolError(f"Received an invalid header block: {problem}")


def adopt(conn: H2Connection) -> None:
    """
    Make C{conn} (a server's, fields as bytes, nothing received yet) a
    L{CheckedInbound}, decoding with L{TunnelDecoder}.
    """
    if conn.config.client_side or conn.config.header_encoding:
        raise ValueError("only a server's connection with fields as bytes")
    conn.__class__ = CheckedInbound
    # Dispatched by CheckedInbound._receive_frame, through _FRAME_HANDLERS.
    del conn._frame_dispatch_table
    # Checked by CheckedInbound._receive_headers_frame instead, as h2 would.
    conn.config.validate_inbound_headers = False
    conn.config.normalize_inbound_headers = False
    old = conn.decoder
    decoder = TunnelDecoder(old.max_header_list_size)
    decoder.max_allowed_table_size = old.max_allowed_table_size
    decoder.header_table.maxsize = old.header_table.maxsize
    conn.decoder = decoder
