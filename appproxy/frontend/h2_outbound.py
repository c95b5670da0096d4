"""
The frames a public HTTP/2 connection sends for a response, written in one
step each.

h2 sends a response's header block, data and end through its connection
and stream state machines (an enum-keyed table look-up and a check of the
input's type per transition), builds a C{hyperframe} object per frame (a
set of flags made per frame, a C{debug} log call at each step even when
the logger discards it) and serialises it again.  L{LeanOutbound} does the
same for the usual case: a server's stream, open or half-closed by the
client, on a connection that is open, with h2's default (discarding)
logger and its outbound header checks off (L{appproxy.frontend.h2_guard}
turns them on again for a block that needs them).  It makes the same state
changes as h2 (the stream's state, whether the response's headers were
sent, how it closed, both flow-control windows) and writes the same bytes
with the tunnel's frame writer (L{appproxy.tunnel.wire}); anything else,
errors included, goes through h2's own methods, which raise as before.
C{tests.test_h2_outbound} holds the two side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from h2.config import DummyLogger
from h2.connection import ConnectionState, H2Connection
from h2.stream import StreamClosedBy, StreamState
from h2.utilities import extract_method_header

from appproxy.frontend.h2_inbound import CheckedInbound
from appproxy.tunnel.wire import CONTINUATION, DATA, END_HEADERS, END_STREAM, HEAD, HEADERS

__all__ = ["LeanOutbound", "lean_outbound"]

_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_CLOSED = StreamState.CLOSED
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_BY_SEND_END_STREAM = StreamClosedBy.SEND_END_STREAM


class LeanOutbound(CheckedInbound):
    """
    L{CheckedInbound} whose C{send_headers}, C{send_data} and C{end_stream}
    take a short way for a response on an open stream (see the module
    docstring).
    """

    def _sending_stream(self, stream_id: int) -> Any:
        """The stream a response may be sent on the short way, or C{None}."""
        if self.state_machine.state is not _SERVER_OPEN or type(self.config.logger) is not (
            DummyLogger
        ):
            return None
        stream = self.streams.get(stream_id)
        if stream is None:
            return None
        state = stream.state_machine.state
        if state is not _HALF_CLOSED_REMOTE and state is not _OPEN:
            return None
        return stream

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[Any],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        stream = self._sending_stream(stream_id)
        config = self.config
        if (
            stream is None
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or config.normalize_outbound_headers
            or config.validate_outbound_headers
            or type(headers) is not list
            or not headers
        ):
            super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
            return
        machine = stream.state_machine
        first = headers[0]
        if (
            machine.client is not False
            or machine.headers_sent
            or type(first[0]) is not bytes
            or type(first[1]) is not bytes
            or first[0] != b":status"
            or first[1][:1] == b"1"
        ):
            # A trailer block, an informational response, or fields not
            # given as bytes: h2's way.
            super().send_headers(stream_id, headers, end_stream)
            return
        # h2's transitions: the response's headers sent (the state is kept),
        # then its end if asked for; made before encoding, as h2 does.
        machine.headers_sent = True
        if end_stream:
            _end(machine)
        block = self.encoder.encode(headers)
        size = stream.max_outbound_frame_size
        flags = END_STREAM if end_stream else 0
        if len(block) <= size:
            self._data_to_send += (
                HEAD.pack(len(block) << 8 | HEADERS, flags | END_HEADERS, stream_id) + block
            )
        else:
            out = self._data_to_send
            kind = HEADERS
            for start in range(0, len(block), size):
                chunk = block[start : start + size]
                last = END_HEADERS if start + size >= len(block) else 0
                out += HEAD.pack(len(chunk) << 8 | kind, flags | last, stream_id) + chunk
                kind, flags = CONTINUATION, 0
        stream.request_method = extract_method_header(headers)

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        stream = self._sending_stream(stream_id)
        size = len(data)
        if (
            stream is None
            or pad_length is not None
            or (
                size
                and size
                > min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
            )
            or size > self.max_outbound_frame_size
        ):
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        if type(data) is not bytes:
            data = bytes(data)
        if end_stream:
            _end(stream.state_machine)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        self._data_to_send += (
            HEAD.pack(size << 8 | DATA, END_STREAM if end_stream else 0, stream_id) + data
        )

    def end_stream(self, stream_id: int) -> None:
        stream = self._sending_stream(stream_id)
        if stream is None:
            super().end_stream(stream_id)
            return
        _end(stream.state_machine)
        self._data_to_send += HEAD.pack(DATA, END_STREAM, stream_id)


def _end(machine: Any) -> None:
    """h2's SEND_END_STREAM transition from OPEN or HALF_CLOSED_REMOTE."""
    if machine.state is _OPEN:
        machine.state = _HALF_CLOSED_LOCAL
    else:
        machine.state = _CLOSED
        machine.stream_closed_by = _BY_SEND_END_STREAM


def lean_outbound(conn: H2Connection) -> None:
    """Make C{conn} (made a L{CheckedInbound} by L{adopt}) a L{LeanOutbound}."""
    if type(conn) is not CheckedInbound:
        raise TypeError("only a connection adopt() made a CheckedInbound")
    conn.__class__ = LeanOutbound
