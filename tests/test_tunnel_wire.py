"""
The tunnel's HTTP/2 frame codec (L{appproxy.tunnel.wire}): what it
serialises parses back to the same frame, and hyperframe (h2's frame
library) reads it as the same frame; what hyperframe serialises, it reads
as hyperframe does.
"""

from __future__ import annotations

from h2.exceptions import FrameDataMissingError, ProtocolError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel import wire

stream_ids = st.integers(min_value=1, max_value=wire.STREAM_ID_MASK)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


def hyper(data: bytes) -> list[Frame]:
    """hyperframe's reading of serialised frames."""
    frames = []
    view = memoryview(data)
    while view:
        f, length = Frame.parse_frame_header(view[:9])
        f.parse_body(view[9 : 9 + length])
        frames.append(f)
        view = view[9 + length :]
    return frames


class RoundTripTests(SynchronousTestCase):
    @given(
        st.integers(min_value=0, max_value=255),
        st.integers(min_value=0, max_value=255),
        st.integers(min_value=0, max_value=wire.STREAM_ID_MASK),
        st.binary(max_size=300),
        st.binary(max_size=20),
    )
    def test_any_frame(self, kind: int, flags: int, sid: int, payload: bytes, rest: bytes) -> None:
        """Any frame splits back into its type, flags, stream and payload."""
        data = wire.frame(kind, flags, sid, payload)
        self.assertEqual(len(data), 9 + len(payload))
        frames, left = wire.split_frames(data + data + rest)
        self.assertEqual(frames, [(kind, flags, sid, payload)] * 2)
        self.assertEqual(left, rest if len(rest) < 9 else left)
        self.assertTrue(rest.startswith(left) or left.startswith(rest[:9]))

    @given(
        stream_ids,
        st.binary(max_size=70000),
        st.booleans(),
        st.integers(min_value=16384, max_value=20000),
    )
    def test_headers_continuations(self, sid: int, block: bytes, end: bool, max_size: int) -> None:
        """A block in HEADERS + CONTINUATION frames, each within the frame size."""
        data = wire.headers_frames(sid, block, end, max_size)
        frames, left = wire.split_frames(data)
        self.assertEqual(left, b"")
        self.assertEqual(b"".join(f[3] for f in frames), block)
        self.assertTrue(all(len(f[3]) <= max_size for f in frames))
        self.assertEqual(
            [f[0] for f in frames], [wire.HEADERS] + [wire.CONTINUATION] * (len(frames) - 1)
        )
        parsed = hyper(data)
        self.assertIsInstance(parsed[0], HeadersFrame)
        self.assertTrue(all(isinstance(f, ContinuationFrame) for f in parsed[1:]))
        self.assertEqual(b"".join(f.data for f in parsed), block)  # type: ignore[attr-defined]
        self.assertEqual("END_STREAM" in parsed[0].flags, end)
        self.assertEqual(
            ["END_HEADERS" in f.flags for f in parsed], [False] * (len(parsed) - 1) + [True]
        )
        self.assertTrue(all(f.stream_id == sid for f in parsed))

    @given(
        stream_ids,
        st.binary(max_size=200),
        st.integers(min_value=1, max_value=256),
        st.integers(min_value=0, max_value=wire.STREAM_ID_MASK),
        st.booleans(),
    )
    def test_headers_priority(
        self, sid: int, block: bytes, weight: int, depends: int, exclusive: bool
    ) -> None:
        if depends == sid:
            self.assertRaises(ProtocolError, wire.priority_field, sid, weight, depends, exclusive)
            return
        field = wire.priority_field(sid, weight, depends, exclusive)
        [parsed] = hyper(wire.headers_frames(sid, block, False, 16384, field))
        assert isinstance(parsed, HeadersFrame)
        self.assertEqual(parsed.data, block)
        self.assertEqual(
            (parsed.depends_on, parsed.exclusive, parsed.stream_weight + 1),
            (depends, exclusive, weight),
        )
        self.assertEqual(wire.parse_priority(field), (depends, exclusive, weight))

    @given(
        stream_ids,
        st.binary(max_size=1000),
        st.booleans(),
        st.none() | st.integers(min_value=0, max_value=255),
    )
    def test_data(self, sid: int, data: bytes, end: bool, pad: int | None) -> None:
        serialised = wire.data_frame(sid, data, end, pad)
        [parsed] = hyper(serialised)
        assert isinstance(parsed, DataFrame)
        self.assertEqual(
            (parsed.stream_id, parsed.data, "END_STREAM" in parsed.flags), (sid, data, end)
        )
        self.assertEqual(parsed.flow_controlled_length, len(data) + (0 if pad is None else pad + 1))
        [(_, flags, _, payload)], _ = wire.split_frames(serialised)
        self.assertEqual(wire.unpadded(payload) if flags & wire.PADDED else payload, data)

    @given(stream_ids, st.binary(max_size=500), st.integers(min_value=0, max_value=255))
    def test_hyperframe_padding(self, sid: int, data: bytes, pad: int) -> None:
        """hyperframe's padded DATA unpads to the same data."""
        f = DataFrame(sid, data, pad_length=pad)
        f.flags.add("PADDED")
        [(kind, flags, _, payload)], _ = wire.split_frames(f.serialize())
        self.assertEqual((kind, flags & wire.PADDED), (wire.DATA, wire.PADDED))
        self.assertEqual(wire.unpadded(payload), data)

    @given(st.dictionaries(st.integers(min_value=0, max_value=0xFFFF), u32, max_size=8))
    def test_settings(self, settings: dict[int, int]) -> None:
        data = wire.settings_frame(settings.items())
        if all(code < 256 for code in settings):
            # (hyperframe 6.1 serialises only the low octet of a setting's code)
            self.assertEqual(data, SettingsFrame(0, settings=settings).serialize())
        [parsed] = hyper(data)
        assert isinstance(parsed, SettingsFrame)
        self.assertEqual(parsed.settings, settings)
        [(_, _, _, payload)], _ = wire.split_frames(data)
        self.assertEqual(wire.parse_settings(payload), settings)

    @given(st.binary(min_size=8, max_size=8), st.booleans())
    def test_ping(self, opaque: bytes, ack: bool) -> None:
        f = PingFrame(0, opaque_data=opaque)
        if ack:
            f.flags.add("ACK")
        self.assertEqual(wire.ping_frame(opaque, ack), f.serialize())

    @given(st.integers(min_value=0, max_value=wire.STREAM_ID_MASK), u32, st.binary(max_size=40))
    def test_goaway(self, last: int, code: int, extra: bytes) -> None:
        data = wire.goaway_frame(last, code, extra)
        self.assertEqual(
            data,
            GoAwayFrame(0, last_stream_id=last, error_code=code, additional_data=extra).serialize(),
        )
        [(_, _, _, payload)], _ = wire.split_frames(data)
        self.assertEqual(wire.parse_goaway(payload), (last, code, extra))

    @given(stream_ids, u32, st.integers(min_value=1, max_value=wire.MAX_WINDOW))
    def test_rst_and_window_update(self, sid: int, code: int, increment: int) -> None:
        self.assertEqual(
            wire.rst_stream_frame(sid, code), RstStreamFrame(sid, error_code=code).serialize()
        )
        self.assertEqual(
            wire.window_update_frame(sid, increment),
            WindowUpdateFrame(sid, window_increment=increment).serialize(),
        )
        [(_, _, _, payload)], _ = wire.split_frames(wire.window_update_frame(sid, increment))
        self.assertEqual(wire.parse_u32(payload), increment)

    @given(
        stream_ids,
        st.integers(min_value=0, max_value=wire.STREAM_ID_MASK),
        st.booleans(),
        st.integers(0, 255),
    )
    def test_priority_frame(self, sid: int, depends: int, exclusive: bool, weight: int) -> None:
        data = PriorityFrame(
            sid, depends_on=depends, exclusive=exclusive, stream_weight=weight
        ).serialize()
        [(kind, _, got, payload)], _ = wire.split_frames(data)
        self.assertEqual((kind, got), (wire.PRIORITY, sid))
        self.assertEqual(wire.parse_priority(payload), (depends, exclusive, weight + 1))

    def test_bad_payloads(self) -> None:
        self.assertRaises(ProtocolError, wire.unpadded, b"\x05abc")
        self.assertRaises(ProtocolError, wire.unpadded, b"\x01")
        self.assertRaises(FrameDataMissingError, wire.unpadded, b"")
        self.assertEqual(wire.unpadded(b"\x02a\x00\x00"), b"a")
        self.assertRaises(FrameDataMissingError, wire.parse_settings, b"\x00" * 7)
        self.assertRaises(FrameDataMissingError, wire.parse_u32, b"\x00" * 5)
        self.assertRaises(FrameDataMissingError, wire.parse_goaway, b"\x00" * 7)
        self.assertRaises(FrameDataMissingError, wire.parse_priority, b"\x00" * 4)
