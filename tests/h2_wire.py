"""
Raw HTTP/2 for the tunnel connection's conformance and differential tests:
frames built byte by byte (so that hostile ones can be), the frames an
endpoint wrote parsed back, and the two ends of a tunnel connection set up
as L{appproxy.tunnel.base.TunnelProtocol.connectionMade} sets them up.

Only the public interface of an HTTP/2 endpoint is used here (the methods
the tunnel's protocols call, h2's event and exception classes), so that the
same tests hold any implementation of L{TunnelConnection} to h2's answers.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from appproxy.tunnel.base import CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW
from appproxy.tunnel.connection import TunnelConnection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

#: What the tunnel's ends announce (TunnelProtocol.local_settings).
TUNNEL_SETTINGS: dict[SettingCodes | int, int] = {
    SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
    SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
    SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 16,
    SettingCodes.ENABLE_PUSH: 0,
}


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, whatever its contents (RFC 9113 section 4.1)."""
    length = len(payload)
    return struct.pack(">BHBBL", length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def settings(pairs: dict[int, int] | None = None, ack: bool = False) -> bytes:
    payload = b"".join(struct.pack(">HL", k, v) for k, v in (pairs or {}).items())
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment))


def rst_stream(stream_id: int, code: int = ErrorCodes.CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">L", code))


def ping(data: bytes = b"12345678", ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def goaway(last_stream_id: int, code: int = ErrorCodes.NO_ERROR) -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">LL", last_stream_id, code))


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal without indexing, name and value as they are."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals: no compression state on either side."""
    return b"".join(literal(name, value) for name, value in fields)


REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")]
RESPONSE = [(b":status", b"200")]


def headers(stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool = False) -> bytes:
    flags = END_HEADERS | (END_STREAM if end_stream else 0)
    return frame(HEADERS, flags, stream_id, block(fields))


class Wrote(NamedTuple):
    """A frame an endpoint wrote: its type, flags, stream and payload."""

    kind: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> int:
        """The error code of a RST_STREAM or GOAWAY."""
        offset = 4 if self.kind == GOAWAY else 0
        return int(struct.unpack(">L", self.payload[offset : offset + 4])[0])


def parse(data: bytes) -> list[Wrote]:
    """The frames in C{data} (after a client's preface, if it starts with one)."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    frames = []
    at = 0
    while at < len(data):
        high, low, kind, flags, sid = struct.unpack(">BHBBL", data[at : at + 9])
        length = high << 16 | low
        frames.append(Wrote(kind, flags, sid & 0x7FFFFFFF, data[at + 9 : at + 9 + length]))
        at += 9 + length
    assert at == len(data), "a partial frame was written"
    return frames


def ack_ends(data: bytes) -> list[int]:
    """The offsets in C{data} just after each SETTINGS frame with ACK."""
    at = len(PREFACE) if data.startswith(PREFACE) else 0
    ends = []
    while at + 9 <= len(data):
        high, low, kind, flags = struct.unpack(">BHBB", data[at : at + 5])
        at += 9 + (high << 16 | low)
        if kind == SETTINGS and flags & ACK:
            ends.append(at)
    return ends


def errors_written(frames: list[Wrote]) -> list[tuple[str, int, int]]:
    """The GOAWAY and RST_STREAM frames among C{frames}: (kind, stream, code)."""
    return [
        ("GOAWAY" if f.kind == GOAWAY else "RST_STREAM", f.stream_id, f.error_code)
        for f in frames
        if f.kind in (GOAWAY, RST_STREAM)
    ]


def tunnel_end(client_side: bool, connection_window: int = CONNECTION_WINDOW) -> TunnelConnection:
    """An end of the tunnel as TunnelProtocol.connectionMade starts it."""
    conn = TunnelConnection(client_side)
    conn.initiate_connection()
    conn.update_settings(TUNNEL_SETTINGS)
    if connection_window > 65535:
        conn.increment_flow_control_window(connection_window - 65535)
    return conn


def greeted(client_side: bool, connection_window: int = CONNECTION_WINDOW) -> TunnelConnection:
    """
    An end of the tunnel whose (raw) peer has sent its preface and SETTINGS
    and acknowledged both of our SETTINGS frames: our settings are in force.
    """
    conn = tunnel_end(client_side, connection_window)
    conn.data_to_send()
    conn.receive_data(
        (b"" if client_side else PREFACE) + settings() + settings(ack=True) + settings(ack=True)
    )
    conn.data_to_send()
    return conn


class Outcome(NamedTuple):
    """What an endpoint did with some bytes: what it raised and wrote."""

    raised: type[H2Error] | None
    written: list[tuple[str, int, int]]
    events: list[Any]


def feed(conn: TunnelConnection, data: bytes) -> Outcome:
    """Give C{conn} C{data}: what it raised (an L{H2Error}) and wrote."""
    raised: type[H2Error] | None = None
    events: list[Any] = []
    try:
        events = list(conn.receive_data(data))
    except H2Error as e:
        raised = type(e)
    return Outcome(raised, errors_written(parse(conn.data_to_send())), events)
