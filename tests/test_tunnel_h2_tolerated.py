"""
The tunnel's HTTP/2 connection (L{TunnelConnection}) with odd but lawful
frames, frames on streams that just closed, a CONTINUATION flood, frames
after a GOAWAY, and the timing of our SETTINGS.

Frames on a closed stream (RFC 9113 section 5.1) must be tolerated or
answered as the RFC says, and the connection must go on: each such test
ends by checking that a PING is still answered.

Tests whose docstring says "h2 broke RFC 9113" assert the RFC's answer
where the h2-based implementation (the tunnel's connection until it had its
own) gave another: the RFC's text is quoted, and h2's answer described.
"""

from __future__ import annotations

import struct

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import FrameTooLargeError, ProtocolError, StreamClosedError
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connection import TunnelConnection
from tests.h2_wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    MAX_FRAME_SIZE,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    REQUEST,
    RESPONSE,
    STREAM_WINDOW,
    WINDOW_UPDATE,
    Outcome,
    block,
    feed,
    frame,
    goaway,
    greeted,
    headers,
    literal,
    parse,
    ping,
    rst_stream,
    settings,
    tunnel_end,
    window_update,
)

E = ErrorCodes
R1 = headers(1, REQUEST)
R1_ENDED = headers(1, REQUEST, end_stream=True)


def server() -> TunnelConnection:
    return greeted(False)


def types(outcome: Outcome) -> list[type]:
    return [type(event) for event in outcome.events]


class Base(SynchronousTestCase):
    def assertQuiet(self, outcome: Outcome) -> None:
        """Accepted: nothing raised, no GOAWAY or RST_STREAM written."""
        self.assertEqual((outcome.raised, outcome.written), (None, []))

    def assertGoesOn(self, conn: TunnelConnection) -> None:
        """The connection still works: a PING is answered."""
        outcome = feed(conn, ping(b"stillup!"))
        self.assertQuiet(outcome)
        conn.receive_data(b"")
        conn.ping(b"ours....")
        frames = parse(conn.data_to_send())
        self.assertEqual(frames[-1].kind, PING)

    def refused(self, conn: TunnelConnection, data: bytes) -> Outcome:
        outcome = feed(conn, data)
        self.assertIsNotNone(outcome.raised)
        assert outcome.raised is not None
        self.assertTrue(issubclass(outcome.raised, ProtocolError), outcome.raised)
        self.assertEqual([kind for kind, _, _ in outcome.written], ["GOAWAY"])
        return outcome


class AcceptedTests(Base):
    def test_padded_data(self) -> None:
        """
        Padding counts against flow control but is not delivered; padding
        one byte shorter than the payload is lawful (6.1).
        """
        conn = server()
        outcome = feed(
            conn,
            R1
            + frame(DATA, PADDED, 1, bytes([3]) + b"abcd")
            + frame(DATA, PADDED, 1, bytes([4]) + b"abcd"),
        )
        self.assertQuiet(outcome)
        data = [
            (e.data, e.flow_controlled_length)
            for e in outcome.events
            if isinstance(e, DataReceived)
        ]
        self.assertEqual(data, [(b"a", 5), (b"", 5)])
        self.assertGoesOn(conn)

    def test_stream_window_filled_exactly(self) -> None:
        """DATA up to the last byte of the stream's window is accepted."""
        conn = server()
        chunks = STREAM_WINDOW // MAX_FRAME_SIZE
        outcome = feed(conn, R1 + frame(DATA, 0, 1, b"x" * MAX_FRAME_SIZE) * chunks)
        self.assertQuiet(outcome)
        received = [e for e in outcome.events if isinstance(e, DataReceived)]
        self.assertEqual(sum(len(e.data) for e in received), STREAM_WINDOW)
        self.assertEqual(sum(e.flow_controlled_length for e in received), STREAM_WINDOW)
        self.assertGoesOn(conn)

    def test_frame_size_before_settings_acknowledged(self) -> None:
        """
        Until the peer acknowledges our SETTINGS, frames are held to the
        default SETTINGS_MAX_FRAME_SIZE of 16,384 (our larger value is not
        in force yet).
        """
        conn = tunnel_end(False)
        conn.data_to_send()
        conn.receive_data(PREFACE + settings())
        conn.data_to_send()
        outcome = feed(conn, R1 + frame(DATA, 0, 1, b"x" * 16385))
        self.assertEqual(outcome.raised, FrameTooLargeError)
        self.assertEqual(outcome.written, [("GOAWAY", 0, E.FRAME_SIZE_ERROR)])

    def test_window_overflow_stream(self) -> None:
        """
        A WINDOW_UPDATE overflowing a stream's window is a stream error
        FLOW_CONTROL_ERROR (6.9.1): that stream is reset, the connection goes on.
        """
        conn = server()
        outcome = feed(conn, R1 + window_update(1, 2**31 - 1))
        self.assertEqual(outcome.raised, None)
        self.assertEqual(outcome.written, [("RST_STREAM", 1, E.FLOW_CONTROL_ERROR)])
        self.assertEqual(types(outcome), [RequestReceived, StreamReset])
        self.assertGoesOn(conn)

    def test_unknown_frames_ignored(self) -> None:
        """Frames of unknown types are ignored (5.5), on any stream."""
        conn = server()
        outcome = feed(conn, frame(0x42, 0xFF, 0, b"what") + R1 + frame(0xEE, 0, 1, b"x"))
        self.assertQuiet(outcome)
        self.assertIn(RequestReceived, types(outcome))
        self.assertGoesOn(conn)

    def test_unknown_setting_ignored(self) -> None:
        conn = server()
        self.assertQuiet(feed(conn, settings({0x99: 7})))
        self.assertGoesOn(conn)

    def test_priority_on_idle_stream(self) -> None:
        """PRIORITY may arrive on an idle stream (5.1); it opens nothing."""
        conn = server()
        self.assertQuiet(feed(conn, frame(PRIORITY, 0, 3, struct.pack(">LB", 0, 16))))
        self.assertQuiet(feed(conn, R1))
        self.assertGoesOn(conn)

    def test_reserved_bit_of_stream_id_ignored(self) -> None:
        """The reserved bit of the stream identifier is ignored (4.1)."""
        conn = server()
        outcome = feed(conn, frame(HEADERS, END_HEADERS, 0x80000001, block(REQUEST)))
        self.assertQuiet(outcome)
        self.assertEqual([e.stream_id for e in outcome.events], [1])

    def test_te_trailers_and_informational(self) -> None:
        conn = server()
        self.assertQuiet(feed(conn, headers(1, [*REQUEST, (b"te", b"trailers")])))
        conn = greeted(True)
        conn.send_headers(1, REQUEST)
        conn.data_to_send()
        outcome = feed(conn, headers(1, [(b":status", b"100")]) + headers(1, RESPONSE))
        self.assertQuiet(outcome)
        self.assertEqual(types(outcome), [InformationalResponseReceived, ResponseReceived])


class ClosedStreamTests(Base):
    """RFC 9113 section 5.1: frames on a stream that has just closed."""

    def closed_both_ways(self) -> TunnelConnection:
        conn = server()
        self.assertQuiet(feed(conn, R1_ENDED))
        conn.send_headers(1, RESPONSE, end_stream=True)
        conn.data_to_send()
        return conn

    def test_closed_data(self) -> None:
        """
        DATA after END_STREAM both ways (5.1, closed): "an endpoint that
        receives any frames after receiving a frame with the END_STREAM flag
        set MUST treat that as a connection error (Section 5.4.1) of type
        STREAM_CLOSED, unless the frame is permitted" (WINDOW_UPDATE,
        RST_STREAM, PRIORITY: test_closed_window_update_rst_priority).  h2
        broke RFC 9113 here: it answered with a stream error (RST_STREAM).
        """
        conn = self.closed_both_ways()
        outcome = feed(conn, frame(DATA, 0, 1, b"x") + frame(DATA, END_STREAM, 1, b"x"))
        self.assertEqual(outcome.raised, StreamClosedError)
        self.assertEqual(outcome.written, [("GOAWAY", 0, E.STREAM_CLOSED)])

    def test_closed_window_update_rst_priority(self) -> None:
        """WINDOW_UPDATE, RST_STREAM and PRIORITY after END_STREAM: ignored."""
        conn = self.closed_both_ways()
        outcome = feed(
            conn,
            window_update(1, 5) + rst_stream(1) + frame(PRIORITY, 0, 1, struct.pack(">LB", 0, 1)),
        )
        self.assertQuiet(outcome)
        self.assertNotIn(StreamReset, types(outcome))
        self.assertGoesOn(conn)

    def test_half_closed_remote(self) -> None:
        """
        DATA or HEADERS after the peer's END_STREAM: a stream error
        STREAM_CLOSED; WINDOW_UPDATE is lawful there.
        """
        for extra in (frame(DATA, 0, 1, b"x"), headers(1, [(b"x", b"1")], end_stream=True)):
            conn = server()
            feed(conn, R1_ENDED)
            outcome = feed(conn, extra)
            self.assertEqual(outcome.raised, None)
            self.assertEqual(outcome.written, [("RST_STREAM", 1, E.STREAM_CLOSED)])
            self.assertEqual(
                [(type(e), e.error_code) for e in outcome.events],
                [(StreamReset, E.STREAM_CLOSED)],
            )
            self.assertGoesOn(conn)
        conn = server()
        feed(conn, R1_ENDED)
        outcome = feed(conn, window_update(1, 5))
        self.assertQuiet(outcome)
        self.assertEqual(types(outcome), [WindowUpdated])

    def test_after_peer_reset(self) -> None:
        """
        After the peer's RST_STREAM, DATA or HEADERS on that stream are a
        stream error STREAM_CLOSED; WINDOW_UPDATE and RST_STREAM are ignored.
        """
        for extra, written in (
            (frame(DATA, 0, 1, b"x"), [("RST_STREAM", 1, E.STREAM_CLOSED)]),
            (headers(1, [(b"x", b"1")], end_stream=True), [("RST_STREAM", 1, E.STREAM_CLOSED)]),
            (window_update(1, 5), []),
            (rst_stream(1), []),
        ):
            conn = server()
            outcome = feed(conn, R1 + rst_stream(1, E.CANCEL))
            self.assertEqual(
                [(type(e), getattr(e, "error_code", None)) for e in outcome.events],
                [(RequestReceived, None), (StreamReset, E.CANCEL)],
            )
            outcome = feed(conn, extra)
            self.assertEqual((outcome.raised, outcome.written), (None, written))
            self.assertNotIn(StreamReset, types(outcome))
            self.assertGoesOn(conn)

    def test_after_our_reset_tolerated(self) -> None:
        """
        After our RST_STREAM, the frames the peer had in flight do not end
        the connection, and their DATA's flow-controlled length is given
        back to the connection's window at once (6.9: it counts there).
        """
        conn = greeted(False, connection_window=65535)
        feed(conn, R1)
        conn.reset_stream(1, E.CANCEL)
        self.assertEqual(parse(conn.data_to_send())[0][:3], (0x3, 0, 1))
        for extra in (window_update(1, 5), rst_stream(1), headers(1, [(b"x", b"1")], True)):
            outcome = feed(conn, extra)
            self.assertEqual(outcome.raised, None)
            self.assertNotIn("GOAWAY", [kind for kind, _, _ in outcome.written])
            self.assertEqual(outcome.events, [])
        raised = None
        try:
            events = conn.receive_data(frame(DATA, 0, 1, b"x" * 60000))
        except ProtocolError as e:
            raised = e
        self.assertEqual((raised, events), (None, []))
        credit = [
            struct.unpack(">L", f.payload)[0]
            for f in parse(conn.data_to_send())
            if f.kind == WINDOW_UPDATE and f.stream_id == 0
        ]
        self.assertEqual(sum(credit), 60000)
        # The window is whole again: 60,000 more bytes fit on a new stream.
        outcome = feed(conn, headers(3, REQUEST) + frame(DATA, 0, 3, b"y" * 60000))
        self.assertQuiet(outcome)
        self.assertEqual(types(outcome), [RequestReceived, DataReceived])
        self.assertGoesOn(conn)

    def test_after_our_reset_ignored(self) -> None:
        """
        RFC 9113 section 5.1 (closed): "An endpoint MUST ignore frames
        that it receives on closed streams after it has sent a RST_STREAM
        frame."  h2 broke RFC 9113 here: it answered each DATA or HEADERS
        frame the peer had in flight with a RST_STREAM (STREAM_CLOSED).
        Their DATA still counts against the connection's window (6.9), which
        is reopened for it: see test_after_our_reset_tolerated.
        """
        conn = server()
        feed(conn, R1)
        conn.reset_stream(1, E.CANCEL)
        conn.data_to_send()
        outcome = feed(conn, frame(DATA, 0, 1, b"x") * 3 + headers(1, [(b"x", b"1")], True))
        self.assertEqual((outcome.raised, outcome.written, outcome.events), (None, [], []))
        self.assertGoesOn(conn)


class FloodTests(Base):
    def flood(self, payload: bytes) -> int:
        """CONTINUATION frames until refused: how many were sent."""
        conn = server()
        self.assertQuiet(feed(conn, frame(HEADERS, 0, 1, block(REQUEST))))
        for count in range(1, 1000):
            outcome = feed(conn, frame(CONTINUATION, 0, 1, payload))
            if outcome.raised is not None:
                self.assertTrue(issubclass(outcome.raised, ProtocolError))
                self.assertIn(
                    outcome.written,
                    ([("GOAWAY", 0, E.PROTOCOL_ERROR)], [("GOAWAY", 0, E.ENHANCE_YOUR_CALM)]),
                )
                return count
        self.fail("an endless header block was accepted")

    def test_continuation_flood_small_frames(self) -> None:
        """
        An endless header block of small CONTINUATION frames is refused
        after 64 frames at the latest (h2's bound: PROTOCOL_ERROR).
        """
        self.assertLessEqual(self.flood(b"\x00"), 64)

    def test_continuation_flood_large_frames(self) -> None:
        """
        Of full-size frames: refused before 64 of them are held (h2 holds
        up to 64 frames, 16 MiB at our SETTINGS_MAX_FRAME_SIZE, before it
        decodes anything; a bound on bytes may refuse far sooner).
        """
        self.assertLessEqual(self.flood(literal(b"a", b"b") * (MAX_FRAME_SIZE // 5)), 64)


class ViolationTests(Base):
    """
    Where h2 broke RFC 9113: the lawful part of its behaviour, and the RFC's
    exact answer.
    """

    def test_hpack_error_ends_connection(self) -> None:
        """An undecodable field block ends the connection."""
        self.refused(server(), frame(HEADERS, END_HEADERS, 1, b"\xff\x7f"))

    def test_hpack_error_is_compression_error(self) -> None:
        """
        RFC 9113 section 4.3: "A decoding error in a field block MUST be
        treated as a connection error of type COMPRESSION_ERROR."  h2 broke
        RFC 9113: PROTOCOL_ERROR.
        """
        outcome = self.refused(server(), frame(HEADERS, END_HEADERS, 1, b"\xff\x7f"))
        self.assertEqual(outcome.written, [("GOAWAY", 0, E.COMPRESSION_ERROR)])

    def test_settings_ack_with_payload_ends_connection(self) -> None:
        self.refused(server(), frame(0x4, 0x1, 0, struct.pack(">HL", 4, 1)))

    def test_settings_ack_with_payload_is_frame_size_error(self) -> None:
        """
        RFC 9113 section 6.5: "Receipt of a SETTINGS frame with the ACK
        flag set and a length field value other than 0 MUST be treated as a
        connection error of type FRAME_SIZE_ERROR."  h2 broke RFC 9113:
        PROTOCOL_ERROR.
        """
        outcome = self.refused(server(), frame(0x4, 0x1, 0, struct.pack(">HL", 4, 1)))
        self.assertEqual(outcome.written, [("GOAWAY", 0, E.FRAME_SIZE_ERROR)])

    def test_bad_client_preface(self) -> None:
        """
        Not HTTP/2 at all: a connection error; the GOAWAY may be omitted (3.4).
        """
        conn = tunnel_end(False)
        conn.data_to_send()
        outcome = feed(conn, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIsNotNone(outcome.raised)
        assert outcome.raised is not None
        self.assertTrue(issubclass(outcome.raised, ProtocolError))
        self.assertIn(outcome.written, ([], [("GOAWAY", 0, E.PROTOCOL_ERROR)]))

    def test_preface_without_settings(self) -> None:
        """
        RFC 9113 section 3.4: the client's preface is followed by a
        SETTINGS frame, and the server's preface is a SETTINGS frame that
        MUST be the first frame it sends; an invalid preface is a connection
        error PROTOCOL_ERROR.  h2 broke RFC 9113: it accepted a PING first,
        at either end.
        """
        conn = tunnel_end(False)
        conn.data_to_send()
        self.refused(conn, PREFACE + ping())
        conn = tunnel_end(True)
        conn.data_to_send()
        self.refused(conn, ping())

    def test_ping_answered_after_our_goaway(self) -> None:
        """
        RFC 9113 sections 6.7 and 6.8: a PING MUST be answered, and after
        a graceful GOAWAY "activity on streams numbered lower than or equal
        to the last stream identifier might still complete successfully";
        the sender may ignore the receiver's streams above it (we refuse
        them: REFUSED_STREAM, 8.7).  h2 broke
        RFC 9113: it took any frame received after its own GOAWAY for a
        PROTOCOL_ERROR.  (The tunnel sends GOAWAY only once idle, and closes
        at once: it does not depend on it.)
        """
        conn = server()
        feed(conn, R1)
        conn.close_connection()
        conn.data_to_send()
        conn.receive_data(ping())
        self.assertEqual([f[:2] for f in parse(conn.data_to_send())], [(PING, 1)])
        outcome = feed(conn, frame(DATA, END_STREAM, 1, b"x") + headers(3, REQUEST))
        self.assertEqual(outcome.raised, None)
        self.assertEqual(outcome.written, [("RST_STREAM", 3, E.REFUSED_STREAM)])
        self.assertEqual([(type(e), e.stream_id) for e in outcome.events][:1], [(DataReceived, 1)])
        conn.send_headers(1, RESPONSE, end_stream=True)
        self.assertEqual(conn.data_to_send()[3], HEADERS)

    def test_stream_finishes_after_their_goaway(self) -> None:
        """
        RFC 9113 section 6.8: streams up to the GOAWAY's last stream
        identifier "might still complete successfully", and "Receivers of a
        GOAWAY frame MUST NOT open additional streams".  h2 broke RFC 9113:
        it took DATA on such a stream for a PROTOCOL_ERROR once it received
        GOAWAY.
        """
        conn = server()
        outcome = feed(conn, R1 + goaway(1))
        self.assertEqual(types(outcome), [RequestReceived, ConnectionTerminated])
        outcome = feed(conn, frame(DATA, END_STREAM, 1, b"x"))
        self.assertQuiet(outcome)
        self.assertEqual(types(outcome), [DataReceived, StreamEnded])
        conn.send_headers(1, RESPONSE, end_stream=True)
        self.assertEqual(conn.data_to_send()[3], HEADERS)
        conn = greeted(True)
        conn.send_headers(1, REQUEST)
        conn.data_to_send()
        self.assertQuiet(feed(conn, goaway(1)))
        self.assertRaises(ProtocolError, conn.send_headers, 3, REQUEST)
        conn.send_data(1, b"body", end_stream=True)
        outcome = feed(conn, headers(1, RESPONSE, end_stream=True))
        self.assertQuiet(outcome)
        self.assertEqual(types(outcome), [ResponseReceived, StreamEnded])


class SettingsTimingTests(Base):
    """
    When our SETTINGS_MAX_FRAME_SIZE is in force (RFC 9113 sections 4.2,
    6.5.3): a peer may send frames up to the size it knows we accept.
    """

    def big_frame(self) -> bytes:
        return headers(1, REQUEST) + frame(DATA, 0, 1, b"x" * 20000)

    def test_larger_frames_after_ack(self) -> None:
        """Once our SETTINGS are acknowledged, frames up to our size are taken."""
        conn = tunnel_end(False)
        conn.data_to_send()
        self.assertQuiet(feed(conn, PREFACE + settings() + settings(ack=True) * 2))
        self.assertQuiet(feed(conn, self.big_frame()))

    def test_larger_frames_in_the_read_of_the_ack(self) -> None:
        """
        RFC 9113 sections 4.2 and 6.5.3: the peer acknowledged our larger
        SETTINGS_MAX_FRAME_SIZE (the values are in force once the ACK is
        received), then sent a frame within it.  h2 broke RFC 9113: it
        applied the new size only from its next receive_data call, so a
        frame that arrived in the same read as the ACK was refused
        (FRAME_SIZE_ERROR, the connection lost), e.g. a tunnel response
        coalesced with the ACKs into one TLS record.
        """
        conn = tunnel_end(False)
        conn.data_to_send()
        self.assertQuiet(
            feed(conn, PREFACE + settings() + settings(ack=True) * 2 + self.big_frame())
        )

    def test_smaller_frame_size_after_its_ack(self) -> None:
        """A smaller SETTINGS_MAX_FRAME_SIZE holds once acknowledged."""
        conn = greeted(False)
        conn.update_settings({5: 16384})
        conn.data_to_send()
        self.assertQuiet(feed(conn, settings(ack=True)))
        outcome = feed(conn, self.big_frame())
        self.assertEqual(outcome.raised, FrameTooLargeError)
        self.assertEqual(outcome.written, [("GOAWAY", 0, E.FRAME_SIZE_ERROR)])

    def test_smaller_frame_size_before_its_ack(self) -> None:
        """
        RFC 9113 section 6.5.3: "Upon receiving a SETTINGS frame with the
        ACK flag set, the sender of the altered settings can rely on the
        values from the oldest unacknowledged SETTINGS frame having been
        applied": with two SETTINGS frames of ours outstanding, the first
        ACK applies the first only.  h2 broke RFC
        9113: it applied both on the first ACK, so a smaller
        SETTINGS_MAX_FRAME_SIZE the peer had not yet seen was enforced and
        its lawful frame refused.
        """
        conn = greeted(False)
        conn.update_settings({4: 1 << 19})
        conn.update_settings({5: 16384})
        conn.data_to_send()
        self.assertQuiet(feed(conn, settings(ack=True)))
        self.assertQuiet(feed(conn, self.big_frame()))
        self.assertQuiet(feed(conn, settings(ack=True)))
        outcome = feed(conn, frame(DATA, 0, 1, b"x" * 20000))
        self.assertEqual(outcome.raised, FrameTooLargeError)
        self.assertEqual(outcome.written, [("GOAWAY", 0, E.FRAME_SIZE_ERROR)])
