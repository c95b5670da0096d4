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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.connection import H2Connection
from h2.events import Event, RequestReceived, TrailersReceived
from h2.exceptions import ProtocolError
from hyperframe.frame import HeadersFrame

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

__all__ = ["CheckedInbound", "adopt"]

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
            headers: list[Field] = event.headers  # type: ignore[attr-defined]
            names = [field[0] for field in headers]
            if b"cookie" in names:
                headers = event.headers = received_fields(headers)  # type: ignore[attr-defined]
                names = [field[0] for field in headers]
            problem = received_problem(headers, kind, names)
            if problem is not None:
                raise ProtocolError(f"Received an invalid header block: {problem}")
            break
        return frames, events

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        # h2's, without its two generator passes for the usual single frame.
        if len(frames) != 1:
            super()._prepare_for_sending(frames)
            return
        frame = frames[0]
        self._data_to_send += frame.serialize()
        assert frame.body_len <= self.max_outbound_frame_size


def adopt(conn: H2Connection) -> None:
    """
    Make C{conn} (a server's, fields as bytes, nothing received yet) a
    L{CheckedInbound}, decoding with L{TunnelDecoder}.
    """
    if conn.config.client_side or conn.config.header_encoding:
        raise ValueError("only a server's connection with fields as bytes")
    conn.__class__ = CheckedInbound
    # h2 dispatches frames through methods it bound at construction.
    conn._frame_dispatch_table[HeadersFrame] = conn._receive_headers_frame
    # Checked by CheckedInbound._receive_headers_frame instead, as h2 would.
    conn.config.validate_inbound_headers = False
    conn.config.normalize_inbound_headers = False
    old = conn.decoder
    decoder = TunnelDecoder(old.max_header_list_size)
    decoder.max_allowed_table_size = old.max_allowed_table_size
    decoder.header_table.maxsize = old.header_table.maxsize
    conn.decoder = decoder
