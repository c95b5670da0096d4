"""
A request's HEADERS frame read from a public HTTP/2 connection's buffer in
one step.

h2's frame buffer reads every frame through hyperframe: its header into a
memoryview and a frame object, the flags one test per defined flag, the body
through a padding step and a priority step, each a look-up in the flags'
set.  L{LeanFrameBuffer} reads a HEADERS frame that ends its header block
and is not padded (a request's, as clients send them) with one C{struct}
call for the header and one for its priority field if any, into the same
hyperframe object h2 would have made; every other frame, and a HEADERS frame
while a header block is open, is read by h2's own code, which also refuses
what it refuses.  C{tests.test_h2_frames} holds the two side by side.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.frame_buffer import FrameBuffer
from hyperframe.frame import HeadersFrame

from appproxy.tunnel.wire import END_HEADERS, HEAD, HEADERS, PADDED, PRIORITY_FLAG, STREAM_ID_MASK

__all__ = ["LeanFrameBuffer", "lean_frames"]

_HEADERS_WORD_MASK = 0xFF
#: A priority field: the dependency (with the exclusive bit) and the weight.
_PRIORITY = struct.Struct(">LB")
#: The HEADERS flags hyperframe knows, by bit (a HEADERS frame read here has
#: END_HEADERS and not PADDED).
_FLAG_NAMES = {
    flags: tuple(
        name
        for name, bit in (("END_STREAM", 0x01), ("END_HEADERS", 0x04), ("PRIORITY", 0x20))
        if flags & bit
    )
    for flags in range(256)
}


class LeanFrameBuffer(FrameBuffer):
    """h2's frame buffer, reading a request's HEADERS frame the short way."""

    def __next__(self) -> Any:
        data = self._data
        if len(data) >= 9 and not self._headers_buffer:
            word, flags, stream_id = HEAD.unpack_from(data)
            length = word >> 8
            stream_id &= STREAM_ID_MASK
            if (
                word & _HEADERS_WORD_MASK == HEADERS
                and flags & END_HEADERS
                and not flags & PADDED
                and stream_id
                and len(data) >= length + 9
                and length <= self.max_frame_size
                and (length >= 5 or not flags & PRIORITY_FLAG)
            ):
                frame = HeadersFrame(stream_id)
                add = frame.flags.add
                for name in _FLAG_NAMES[flags]:
                    add(name)
                start = 9
                if flags & PRIORITY_FLAG:
                    depends_on, weight = _PRIORITY.unpack_from(data, 9)
                    frame.depends_on = depends_on & STREAM_ID_MASK
                    frame.exclusive = bool(depends_on >> 31)
                    frame.stream_weight = weight
                    start = 14
                frame.body_len = length
                frame.data = bytes(data[start : 9 + length])
                del data[: 9 + length]
                return frame
        return super().__next__()


def lean_frames(buffer: Any) -> None:
    """Make C{buffer} (h2's, a connection's C{incoming_buffer}) a L{LeanFrameBuffer}."""
    if type(buffer) is not FrameBuffer:
        raise TypeError("only h2's own frame buffer")
    buffer.__class__ = LeanFrameBuffer
