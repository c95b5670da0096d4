"""
A hostile peer on the tunnel (a compromised connector, or a hostile
service) sending malformed or abusive HTTP/2: each answered as RFC 9113
requires, a connection error with a GOAWAY carrying the right code, or a
stream error with an RST_STREAM that ends only that stream.
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from hpack import Encoder
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel import wire
from appproxy.tunnel.connection import TunnelConnection
from appproxy.tunnel.wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    split_frames,
)

REQUEST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
E = ErrorCodes


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


class Peer:
    """The hostile end: an HPACK encoder and raw frames."""

    def __init__(self) -> None:
        self.encoder = Encoder()

    def headers(
        self, sid: int, fields: list[tuple[bytes, bytes]] = REQUEST, flags: int = END_HEADERS
    ) -> bytes:
        return frame(HEADERS, flags, sid, self.encoder.encode(fields))


def server() -> tuple[TunnelConnection, Peer]:
    """A tunnel connection in the connector's role, past the prefaces."""
    conn = TunnelConnection(client_side=False)
    conn.initiate_connection()
    conn.receive_data(wire.PREFACE + wire.settings_frame([]) + wire.SETTINGS_ACK_FRAME)
    conn.data_to_send()
    return conn, Peer()


def client() -> tuple[TunnelConnection, Peer]:
    """A tunnel connection in the service's role, past the prefaces."""
    conn = TunnelConnection(client_side=True)
    conn.initiate_connection()
    conn.receive_data(wire.settings_frame([]) + wire.SETTINGS_ACK_FRAME)
    conn.data_to_send()
    return conn, Peer()


class HostileTests(SynchronousTestCase):
    def goaway(self, conn: TunnelConnection, data: bytes, code: ErrorCodes) -> None:
        """C{data} is a connection error of type C{code}: raised, GOAWAY queued."""
        with self.assertRaises(ProtocolError) as raised:
            conn.receive_data(data)
        self.assertEqual(raised.exception.error_code, code, raised.exception)
        frames, _ = split_frames(conn.data_to_send())
        self.assertEqual(frames[-1][0], GOAWAY)
        self.assertEqual(wire.parse_goaway(frames[-1][3])[1], code)

    def rst(self, conn: TunnelConnection, data: bytes, sid: int, code: ErrorCodes) -> list[Any]:
        """C{data} is a stream error of type C{code} on C{sid}: the connection goes on."""
        events = conn.receive_data(data)
        frames, _ = split_frames(conn.data_to_send())
        self.assertIn((RST_STREAM, 0, sid, u32(code)), frames)
        self.assertNotIn(GOAWAY, [f[0] for f in frames])
        return events

    # -- the preface and frame layout ---------------------------------------

    def test_bad_preface(self) -> None:
        conn = TunnelConnection(client_side=False)
        self.assertRaises(ProtocolError, conn.receive_data, b"GET / HTTP/1.1\r\n\r\n")

    def test_first_frame_not_settings(self) -> None:
        conn = TunnelConnection(client_side=False)
        self.goaway(conn, wire.PREFACE + wire.ping_frame(b"12345678"), E.PROTOCOL_ERROR)
        conn = TunnelConnection(client_side=True)
        self.goaway(conn, wire.SETTINGS_ACK_FRAME, E.PROTOCOL_ERROR)

    def test_oversized_frame_refused_on_its_header(self) -> None:
        """Refused as soon as its 9-octet header arrives: no 16 MiB buffered first."""
        conn, _ = server()
        self.goaway(conn, wire.HEAD.pack(0xFFFFFF << 8 | DATA, 0, 1), E.FRAME_SIZE_ERROR)

    def test_stream_zero_and_nonzero(self) -> None:
        for data in [
            frame(DATA, 0, 0, b"x"),
            frame(HEADERS, END_HEADERS, 0, b""),
            frame(RST_STREAM, 0, 0, u32(0)),
            frame(PRIORITY, 0, 0, bytes(5)),
            frame(SETTINGS, 0, 1, b""),
            frame(PING, 0, 1, bytes(8)),
            frame(GOAWAY, 0, 1, bytes(8)),
        ]:
            conn, _ = server()
            self.goaway(conn, data, E.PROTOCOL_ERROR)

    def test_bad_lengths(self) -> None:
        for data in [
            frame(SETTINGS, 0, 0, bytes(7)),
            frame(SETTINGS, wire.ACK, 0, bytes(6)),
            frame(PING, 0, 0, bytes(7)),
            frame(RST_STREAM, 0, 1, bytes(3)),
            frame(WINDOW_UPDATE, 0, 0, bytes(5)),
            frame(GOAWAY, 0, 0, bytes(7)),
        ]:
            conn, _ = server()
            self.goaway(conn, data, E.FRAME_SIZE_ERROR)

    def test_bad_settings(self) -> None:
        for setting, value, code in [
            (0x4, 2**31, E.FLOW_CONTROL_ERROR),
            (0x2, 2, E.PROTOCOL_ERROR),
            (0x5, 100, E.PROTOCOL_ERROR),
            (0x5, 2**24, E.PROTOCOL_ERROR),
        ]:
            conn, _ = server()
            self.goaway(conn, wire.settings_frame([(setting, value)]), code)

    def test_bad_padding(self) -> None:
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        self.goaway(conn, frame(DATA, PADDED, 1, b"\x05abc"), E.PROTOCOL_ERROR)

    def test_unknown_frame_ignored(self) -> None:
        conn, peer = server()
        self.assertEqual(conn.receive_data(frame(0xFA, 0xFF, 3, b"whatever")), [])
        self.assertEqual(conn.data_to_send(), b"")
        [request] = conn.receive_data(peer.headers(1))
        self.assertIsInstance(request, RequestReceived)

    def test_split_anywhere(self) -> None:
        """Frames cut at any octet give the same events."""
        conn, peer = server()
        data = peer.headers(1) + frame(DATA, END_STREAM, 1, b"body")
        events = []
        for at in range(len(data)):
            events += conn.receive_data(data[at : at + 1])
        self.assertEqual([type(e) for e in events], [RequestReceived, DataReceived, StreamEnded])

    # -- header blocks --------------------------------------------------------

    def test_interleaved_header_block(self) -> None:
        for second in [
            frame(DATA, 0, 1, b"x"),
            frame(CONTINUATION, END_HEADERS, 3, b""),
            frame(0xFA, 0, 1, b""),
        ]:
            conn, peer = server()
            block = peer.encoder.encode(REQUEST)
            self.goaway(conn, frame(HEADERS, 0, 1, block[:3]) + second, E.PROTOCOL_ERROR)

    def test_continuation_alone(self) -> None:
        conn, _ = server()
        self.goaway(conn, frame(CONTINUATION, END_HEADERS, 1, b""), E.PROTOCOL_ERROR)

    def test_continuation_flood(self) -> None:
        """Endless empty CONTINUATION frames: refused after 64."""
        conn, peer = server()
        data = (
            frame(HEADERS, 0, 1, peer.encoder.encode(REQUEST))
            + frame(CONTINUATION, 0, 1, b"") * 100
        )
        self.goaway(conn, data, E.PROTOCOL_ERROR)

    def test_huge_header_block(self) -> None:
        """A block far past SETTINGS_MAX_HEADER_LIST_SIZE is refused before it is complete."""
        conn, _ = server()
        data = frame(HEADERS, 0, 1, bytes(16384)) + frame(CONTINUATION, 0, 1, bytes(16384)) * 40
        self.goaway(conn, data, E.ENHANCE_YOUR_CALM)

    def test_hpack_garbage(self) -> None:
        conn, _ = server()
        self.goaway(
            conn, frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff"), E.COMPRESSION_ERROR
        )

    def test_invalid_request_block(self) -> None:
        conn, peer = server()
        self.goaway(conn, peer.headers(1, [*REQUEST, (b"connection", b"close")]), E.PROTOCOL_ERROR)

    def test_self_dependency(self) -> None:
        conn, peer = server()
        prio = wire.priority_field(3, 16, 1, False)
        block = peer.encoder.encode(REQUEST)
        data = frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, u32(1) + b"\x0f" + block)
        self.goaway(conn, data, E.PROTOCOL_ERROR)
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        self.assertEqual(len(prio), 5)
        events = self.rst(conn, frame(PRIORITY, 0, 1, u32(1) + b"\x0f"), 1, E.PROTOCOL_ERROR)
        self.assertEqual([(type(e), e.remote_reset) for e in events], [(StreamReset, False)])
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        self.rst(conn, frame(PRIORITY, 0, 1, bytes(4)), 1, E.FRAME_SIZE_ERROR)

    # -- stream ids and states ------------------------------------------------

    def test_stream_ids(self) -> None:
        conn, peer = server()
        self.goaway(conn, peer.headers(2), E.PROTOCOL_ERROR)  # a server's id
        conn, peer = server()
        conn.receive_data(peer.headers(5))
        self.goaway(conn, peer.headers(3), E.PROTOCOL_ERROR)  # lower: implicitly closed

    def test_frames_on_idle_streams(self) -> None:
        for data in [
            frame(DATA, 0, 7, b"x"),
            frame(RST_STREAM, 0, 7, u32(8)),
            frame(WINDOW_UPDATE, 0, 7, u32(1)),
        ]:
            conn, peer = server()
            conn.receive_data(peer.headers(1))
            self.goaway(conn, data, E.PROTOCOL_ERROR)

    def test_data_after_end_stream(self) -> None:
        """On a half-closed (remote) stream: a stream error; once closed: a connection error."""
        conn, peer = server()
        conn.receive_data(peer.headers(1, flags=END_HEADERS | END_STREAM))
        events = self.rst(conn, frame(DATA, 0, 1, b"late"), 1, E.STREAM_CLOSED)
        self.assertEqual(
            [(type(e), e.error_code) for e in events], [(StreamReset, E.STREAM_CLOSED)]
        )
        conn, peer = server()
        conn.receive_data(peer.headers(1, flags=END_HEADERS | END_STREAM))
        conn.send_headers(1, [(b":status", b"200")], end_stream=True)
        conn.data_to_send()
        self.goaway(conn, frame(DATA, 0, 1, b"late"), E.STREAM_CLOSED)

    def test_frames_after_our_reset(self) -> None:
        """
        In flight when we reset: ignored ("An endpoint MUST ignore frames
        that it receives on closed streams after it has sent a RST_STREAM
        frame", RFC 9113 section 5.1), but DATA's octets still count against
        the connection's window (6.9) and reopen it; after the peer's reset,
        DATA is a stream error STREAM_CLOSED (5.1).
        """
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        conn.reset_stream(1, E.CANCEL)
        conn.data_to_send()
        window = conn.inbound_flow_control_window
        events = conn.receive_data(frame(DATA, 0, 1, bytes(16000)) * 3)
        frames, _ = split_frames(conn.data_to_send())
        self.assertEqual((events, [f[0] for f in frames]), ([], [WINDOW_UPDATE]))
        self.assertEqual(
            conn.receive_data(frame(WINDOW_UPDATE, 0, 1, u32(5)) + frame(RST_STREAM, 0, 1, u32(0))),
            [],
        )
        self.assertEqual(conn.inbound_flow_control_window, window)  # 48000 consumed, reopened
        conn.receive_data(peer.headers(3) + frame(RST_STREAM, 0, 3, u32(E.CANCEL)))
        self.rst(conn, frame(DATA, 0, 3, b"late"), 3, E.STREAM_CLOSED)

    def test_push_promise(self) -> None:
        conn, _ = client()
        conn.send_headers(1, REQUEST, end_stream=True)
        conn.data_to_send()
        self.goaway(conn, frame(PUSH_PROMISE, END_HEADERS, 1, u32(2)), E.PROTOCOL_ERROR)

    def test_response_rules(self) -> None:
        """DATA before the response, a 1xx with END_STREAM, trailers without END_STREAM."""
        for data in [
            frame(DATA, 0, 1, b"x"),
            Peer().headers(1, [(b":status", b"100")], END_HEADERS | END_STREAM),
            Peer().headers(1, [(b":status", b"200")])
            + frame(HEADERS, END_HEADERS, 1, b"\x40\x01x\x01y"),
        ]:
            conn, _ = client()
            conn.send_headers(1, REQUEST)
            conn.data_to_send()
            self.goaway(conn, data, E.PROTOCOL_ERROR)

    def test_content_length(self) -> None:
        conn, peer = server()
        conn.receive_data(peer.headers(1, [*REQUEST, (b"content-length", b"3")]))
        self.goaway(conn, frame(DATA, END_STREAM, 1, b"four"), E.PROTOCOL_ERROR)

    def test_concurrent_streams(self) -> None:
        """Past our SETTINGS_MAX_CONCURRENT_STREAMS: refused, the HPACK state kept."""
        conn, peer = server()
        conn.update_settings({0x3: 1})
        conn.receive_data(wire.SETTINGS_ACK_FRAME)
        conn.data_to_send()
        conn.receive_data(peer.headers(1))
        events = self.rst(
            conn, peer.headers(3, [*REQUEST, (b"x-new", b"indexed")]), 3, E.REFUSED_STREAM
        )
        self.assertEqual(events, [])
        conn.reset_stream(1)
        [request] = conn.receive_data(peer.headers(5, [*REQUEST, (b"x-new", b"indexed")]))
        assert isinstance(request, RequestReceived)
        self.assertIn((b"x-new", b"indexed"), request.headers)

    # -- flow control ----------------------------------------------------------

    def test_data_beyond_windows(self) -> None:
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        self.goaway(
            conn,
            frame(DATA, 0, 1, bytes(16384)) * 4 + frame(DATA, 0, 1, bytes(16384)),
            E.FLOW_CONTROL_ERROR,
        )
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        conn.increment_flow_control_window(1 << 20, 1)
        data = b"".join(frame(DATA, 0, 1, bytes(16384)) for _ in range(5))
        self.goaway(conn, data, E.FLOW_CONTROL_ERROR)  # the connection's window this time

    def test_window_update_errors(self) -> None:
        conn, peer = server()
        self.goaway(conn, frame(WINDOW_UPDATE, 0, 0, u32(0)), E.PROTOCOL_ERROR)
        conn, peer = server()
        self.goaway(conn, frame(WINDOW_UPDATE, 0, 0, u32(2**31 - 1)), E.FLOW_CONTROL_ERROR)
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        events = self.rst(conn, frame(WINDOW_UPDATE, 0, 1, u32(0)), 1, E.PROTOCOL_ERROR)
        self.assertEqual([type(e) for e in events], [StreamReset])
        conn, peer = server()
        conn.receive_data(peer.headers(1) + peer.headers(3))
        self.rst(conn, frame(WINDOW_UPDATE, 0, 1, u32(2**31 - 1)), 1, E.FLOW_CONTROL_ERROR)
        [event] = conn.receive_data(frame(WINDOW_UPDATE, 0, 3, u32(10)))
        assert isinstance(event, WindowUpdated)
        self.assertEqual((event.stream_id, event.delta), (3, 10))

    def test_settings_window_overflow(self) -> None:
        """A SETTINGS_INITIAL_WINDOW_SIZE that overflows an open stream's window."""
        conn, peer = server()
        conn.receive_data(peer.headers(1) + frame(WINDOW_UPDATE, 0, 1, u32(2**31 - 1 - 65535)))
        self.goaway(conn, wire.settings_frame([(0x4, 65536)]), E.FLOW_CONTROL_ERROR)

    # -- GOAWAY ------------------------------------------------------------------

    def test_goaway_received(self) -> None:
        conn, _ = client()
        conn.send_headers(1, REQUEST)
        conn.send_headers(3, REQUEST)
        conn.data_to_send()
        [event] = conn.receive_data(wire.goaway_frame(1, 0, b"bye"))
        assert isinstance(event, ConnectionTerminated)
        self.assertEqual(
            (event.last_stream_id, event.error_code, event.additional_data), (1, E.NO_ERROR, b"bye")
        )
        # No new stream (RFC 9113 section 6.8: "Receivers of a GOAWAY frame
        # MUST NOT open additional streams"); those up to its last stream
        # identifier may complete.
        self.assertRaises(ProtocolError, conn.send_headers, 5, REQUEST)
        events = conn.receive_data(Peer().headers(1, [(b":status", b"200")]))
        self.assertEqual([type(e) for e in events], [ResponseReceived])
        conn.send_data(1, b"body", end_stream=True)
        self.assertTrue(conn.data_to_send())

    def test_goaway_sent_carries_last_stream(self) -> None:
        conn, peer = server()
        conn.receive_data(peer.headers(1) + peer.headers(7))
        conn.close_connection(E.NO_ERROR)
        [(kind, _, _, payload)], _ = split_frames(conn.data_to_send())
        self.assertEqual((kind, wire.parse_goaway(payload)[:2]), (GOAWAY, (7, 0)))

    # -- anything at all ----------------------------------------------------------

    @given(st.binary(max_size=200))
    def test_random_bytes(self, data: bytes) -> None:
        """Whatever arrives: events, or a ProtocolError with a GOAWAY; nothing else."""
        conn, peer = server()
        conn.receive_data(peer.headers(1))
        try:
            conn.receive_data(data)
        except ProtocolError as e:
            frames, _ = split_frames(conn.data_to_send())
            self.assertEqual(frames[-1][0], GOAWAY)
            self.assertEqual(wire.parse_goaway(frames[-1][3])[1], e.error_code)

    @given(
        st.lists(
            st.tuples(
                st.integers(0, 12), st.integers(0, 255), st.integers(0, 9), st.binary(max_size=30)
            ),
            max_size=12,
        )
    )
    def test_random_frames(self, frames: list[tuple[int, int, int, bytes]]) -> None:
        """Well-framed nonsense: the same."""
        conn, _ = client()
        conn.send_headers(1, REQUEST)
        conn.data_to_send()
        try:
            events = conn.receive_data(b"".join(frame(k, f, s, p) for k, f, s, p in frames))
        except ProtocolError:
            self.assertEqual(split_frames(conn.data_to_send())[0][-1][0], GOAWAY)
            return
        for event in events:
            self.assertNotIsInstance(event, ResponseReceived)
