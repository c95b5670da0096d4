"""
L{appproxy.frontend.h2_frames.LeanFrameBuffer} against h2's frame buffer: the
same bytes, in the same pieces, to both; the same frames out (type, stream,
flags, fields, serialised form), the same errors, and the same bytes left in
the buffer.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from h2.frame_buffer import FrameBuffer
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.h2_frames import LeanFrameBuffer, lean_frames
from appproxy.tunnel.wire import HEAD

_flags = st.integers(0, 255)
_ids = st.sampled_from([0, 1, 3, 0x80000001, 0x7FFFFFFF])


def _raw(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


_frame = st.one_of(
    # HEADERS of any flags (priority, padding, end of block or not), any payload.
    st.builds(_raw, st.just(0x1), _flags, _ids, st.binary(max_size=40)),
    st.builds(_raw, st.just(0x9), _flags, _ids, st.binary(max_size=20)),
    st.builds(_raw, st.just(0x0), _flags, _ids, st.binary(max_size=20)),
    st.builds(_raw, st.just(0x6), st.just(0), st.just(0), st.just(b"12345678")),
)


def _fields(frame: Any) -> Any:
    fields = {k: v for k, v in vars(frame).items() if k != "flags"}
    return type(frame).__name__, sorted(frame.flags), sorted(fields.items()), frame.serialize()


def _read(buffer: FrameBuffer, pieces: list[bytes]) -> Any:
    out: list[Any] = []
    try:
        for piece in pieces:
            buffer.add_data(piece)
            out.extend(_fields(frame) for frame in buffer)
    except Exception as e:
        out.append(type(e).__name__)
    out.append(bytes(buffer._data))
    return out


class SameAsH2Tests(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None)
    @given(
        frames=st.lists(_frame, max_size=6),
        cuts=st.lists(st.integers(0, 200), max_size=4),
        max_size=st.sampled_from([16, 16384]),
    )
    def test_same_frames(self, frames: list[bytes], cuts: list[int], max_size: int) -> None:
        data = b"".join(frames)
        points = sorted({0, len(data), *[c for c in cuts if c < len(data)]})
        pieces = [data[a:b] for a, b in pairwise(points)]
        stock, lean = FrameBuffer(server=False), FrameBuffer(server=False)
        lean_frames(lean)
        for buffer in (stock, lean):
            buffer.max_frame_size = max_size
        self.assertEqual(_read(stock, pieces), _read(lean, pieces))

    def test_request(self) -> None:
        """A request's HEADERS frame, with priority: as hyperframe reads it."""
        frame = HeadersFrame(5, data=b"block", flags=["END_HEADERS", "END_STREAM", "PRIORITY"])
        frame.depends_on, frame.stream_weight, frame.exclusive = 3, 200, True
        wire = frame.serialize() + PingFrame(0, opaque_data=b"12345678").serialize()
        stock, lean = FrameBuffer(), FrameBuffer()
        lean_frames(lean)
        for buffer in (stock, lean):
            buffer.max_frame_size = 16384
        self.assertIs(type(lean), LeanFrameBuffer)
        self.assertEqual(_read(stock, [wire]), _read(lean, [wire]))
        lean.add_data(frame.serialize())
        [read] = list(lean)
        assert isinstance(read, HeadersFrame)
        self.assertEqual((read.data, read.depends_on, read.exclusive), (b"block", 3, True))

    def test_open_block(self) -> None:
        """A HEADERS frame without END_HEADERS, then CONTINUATION: h2's way, joined."""
        first = HeadersFrame(1, data=b"ab", flags=["END_STREAM"]).serialize()
        more = ContinuationFrame(1, data=b"cd", flags=["END_HEADERS"]).serialize()
        data = DataFrame(1, data=b"x").serialize()
        stock, lean = FrameBuffer(), FrameBuffer()
        lean_frames(lean)
        for buffer in (stock, lean):
            buffer.max_frame_size = 16384
        self.assertEqual(_read(stock, [first + more + data]), _read(lean, [first + more + data]))

    def test_only_h2s_buffer(self) -> None:
        self.assertRaises(TypeError, lean_frames, object())
