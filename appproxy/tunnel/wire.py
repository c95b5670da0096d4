"""
HTTP/2 frames (RFC 9113 sections 4 and 6) as bytes, without I/O and without
an object per frame: each frame's 9-octet header is one C{struct} call each
way (L{HEAD}: the 24-bit length and the type as one 32-bit word, the flags,
the stream id), and the few payloads with a layout (SETTINGS, GOAWAY,
RST_STREAM, WINDOW_UPDATE, PRIORITY) are packed and unpacked with C{struct}
as well.  The tunnel's connection (L{appproxy.tunnel.wire_receive}) parses
received frames from its buffer with these; what it sends is built here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from h2.exceptions import FrameDataMissingError, ProtocolError

#: The client's connection preface (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: A frame header: (length << 8 | type, flags, reserved bit + stream id).
HEAD = struct.Struct(">IBL")

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

#: The largest flow-control window and window increment (2^31 - 1).
MAX_WINDOW = 0x7FFFFFFF
#: The largest SETTINGS_MAX_FRAME_SIZE (2^24 - 1).
MAX_FRAME_SIZE_LIMIT = 0xFFFFFF
STREAM_ID_MASK = 0x7FFFFFFF

_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")
_PRIORITY = struct.Struct(">LB")

#: A SETTINGS frame acknowledging the peer's.
SETTINGS_ACK_FRAME = HEAD.pack(SETTINGS << 0, ACK, 0)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, serialised."""
    return HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def data_frame(
    stream_id: int, data: bytes, end_stream: bool, pad_length: int | None = None
) -> bytes:
    """A DATA frame; padded with C{pad_length} zero octets if given."""
    flags = END_STREAM if end_stream else 0
    if pad_length is None:
        return HEAD.pack(len(data) << 8 | DATA, flags, stream_id) + data
    payload = bytes((pad_length,)) + data + bytes(pad_length)
    return HEAD.pack(len(payload) << 8 | DATA, flags | PADDED, stream_id) + payload


def priority_field(
    stream_id: int, weight: int | None, depends_on: int | None, exclusive: bool | None
) -> bytes:
    """The 5-octet priority field of a HEADERS or PRIORITY frame (h2's defaults and checks)."""
    if depends_on == stream_id:
        raise ProtocolError(f"Stream {stream_id} may not depend on itself")
    if weight is not None and not 1 <= weight <= 256:
        raise ProtocolError(f"Weight must be between 1 and 256, not {weight}")
    dependency = depends_on or 0
    if exclusive:
        dependency |= 0x80000000
    return _PRIORITY.pack(dependency, (weight - 1) if weight is not None else 15)


def headers_frames(
    stream_id: int, block: bytes, end_stream: bool, max_size: int, priority: bytes = b""
) -> bytes:
    """
    A header block as one HEADERS frame, followed by as many CONTINUATION
    frames as C{max_size} (the peer's SETTINGS_MAX_FRAME_SIZE) requires.
    """
    flags = END_STREAM if end_stream else 0
    if priority:
        flags |= PRIORITY_FLAG
    room = max_size - len(priority)
    if len(block) <= room:
        return (
            HEAD.pack((len(priority) + len(block)) << 8 | HEADERS, flags | END_HEADERS, stream_id)
            + priority
            + block
        )
    parts = [HEAD.pack(max_size << 8 | HEADERS, flags, stream_id), priority, block[:room]]
    at = room
    while at < len(block):
        chunk = block[at : at + max_size]
        at += max_size
        parts.append(
            HEAD.pack(
                len(chunk) << 8 | CONTINUATION, END_HEADERS if at >= len(block) else 0, stream_id
            )
        )
        parts.append(chunk)
    return b"".join(parts)


def settings_frame(settings: Iterable[tuple[int, int]]) -> bytes:
    """A SETTINGS frame carrying C{settings} (code, value) in that order."""
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(code, value) for code, value in settings))


def ping_frame(opaque: bytes, ack: bool = False) -> bytes:
    return HEAD.pack(8 << 8 | PING, ACK if ack else 0, 0) + opaque


def goaway_frame(last_stream_id: int, error_code: int, additional: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, error_code) + additional)


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    return HEAD.pack(4 << 8 | RST_STREAM, 0, stream_id) + _U32.pack(error_code)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return HEAD.pack(4 << 8 | WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)


# -- received payloads --------------------------------------------------------


def unpadded(payload: bytes) -> bytes:
    """The content of a PADDED frame's payload (RFC 9113 section 6.1)."""
    if not payload:
        raise FrameDataMissingError("Padded frame without a Pad Length field")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolError("Received frame with invalid padding.")
    return payload[1 : len(payload) - pad]


def parse_priority(payload: bytes, at: int = 0) -> tuple[int, bool, int]:
    """(depends_on, exclusive, weight 1-256) of a priority field at C{at}."""
    if len(payload) < at + 5:
        raise FrameDataMissingError("Priority field too short")
    dependency, weight = _PRIORITY.unpack_from(payload, at)
    return dependency & STREAM_ID_MASK, bool(dependency >> 31), weight + 1


def parse_settings(payload: bytes) -> dict[int, int]:
    """A SETTINGS frame's settings; a later value of one setting wins."""
    if len(payload) % 6:
        raise FrameDataMissingError("SETTINGS frame length is not a multiple of 6")
    return dict(_SETTING.iter_unpack(payload))


def parse_u32(payload: bytes) -> int:
    """The 4-octet payload of RST_STREAM or WINDOW_UPDATE."""
    if len(payload) != 4:
        raise FrameDataMissingError("Frame payload must be 4 octets")
    return int(_U32.unpack(payload)[0])


def parse_goaway(payload: bytes) -> tuple[int, int, bytes]:
    """(last_stream_id, error_code, additional debug data) of a GOAWAY."""
    if len(payload) < 8:
        raise FrameDataMissingError("GOAWAY frame too short")
    last, code = _GOAWAY.unpack_from(payload)
    return last & STREAM_ID_MASK, code, payload[8:]


def split_frames(data: bytes) -> tuple[list[tuple[int, int, int, bytes]], bytes]:
    """
    The whole frames at the start of C{data}, as (type, flags, stream id,
    payload), and what follows them (for tests and tools: the connection
    parses its buffer in place).
    """
    frames = []
    pos = 0
    while len(data) - pos >= 9:
        word, flags, sid = HEAD.unpack_from(data, pos)
        end = pos + 9 + (word >> 8)
        if end > len(data):
            break
        frames.append((word & 0xFF, flags, sid & STREAM_ID_MASK, bytes(data[pos + 9 : end])))
        pos = end
    return frames, bytes(data[pos:])
