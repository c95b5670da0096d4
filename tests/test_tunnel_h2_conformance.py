"""
The tunnel's HTTP/2 connection (L{TunnelConnection}) against hostile bytes.

Each end of the tunnel is fed raw frames a broken or hostile peer could send
(built byte by byte in L{tests.h2_wire}), and the test pins what it does:
the exception C{receive_data} raises (the tunnel's protocol catches any
L{H2Error}, writes what the connection wrote and drops the connection) and
the GOAWAY or RST_STREAM, with its error code, it writes for the peer.

The answers asserted are RFC 9113's, each case citing its section.  Where
the RFC asks for a stream error, section 5.4.1 lets an endpoint end the whole
connection instead (h2 did, for several): those cases (L{EITHER}) accept
exactly the two answers, a RST_STREAM of that stream or a GOAWAY, both with
the RFC's error code.  The exception class is h2's (the tunnel's connection
was h2's H2Connection; its own raises the same classes), or a subclass.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from h2.errors import ErrorCodes
from h2.events import StreamReset
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameDataMissingError,
    FrameTooLargeError,
    H2Error,
    InvalidBodyLengthError,
    InvalidSettingsValueError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from hpack import Decoder, NeverIndexedHeaderTuple
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connection import TunnelConnection
from appproxy.tunnel.fields import UnsendableFields
from tests.h2_wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_FRAME_SIZE,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    REQUEST,
    RESPONSE,
    RST_STREAM,
    SETTINGS,
    STREAM_WINDOW,
    WINDOW_UPDATE,
    block,
    feed,
    frame,
    greeted,
    headers,
    literal,
    parse,
    ping,
    rst_stream,
    settings,
    window_update,
)

E = ErrorCodes
Written = list[tuple[str, int, int]]


def server() -> TunnelConnection:
    """The connector's end (the HTTP/2 server), greeted by a raw client."""
    return greeted(False)


def client() -> TunnelConnection:
    """The service's end (the HTTP/2 client), greeted, with stream 1 open."""
    conn = greeted(True)
    conn.send_headers(1, REQUEST)
    conn.data_to_send()
    return conn


def goaway_of(code: int) -> Written:
    return [("GOAWAY", 0, code)]


def priority(stream_id: int, depends_on: int) -> bytes:
    return frame(PRIORITY, 0, stream_id, struct.pack(">LB", depends_on, 16))


R1 = headers(1, REQUEST)
R1_ENDED = headers(1, REQUEST, end_stream=True)
NOT_REQUEST = [f for f in REQUEST if f[0] != b":method"]

#: name: (the end under test, the bytes, the exception class, what it writes)
REFUSED: dict[str, tuple[Callable[[], TunnelConnection], bytes, type[H2Error], Written]] = {
    # RFC 9113 4.2: over SETTINGS_MAX_FRAME_SIZE (ours is MAX_FRAME_SIZE).
    "frame_over_max_size": (
        server,
        R1 + frame(DATA, 0, 1, b"x" * (MAX_FRAME_SIZE + 1)),
        FrameTooLargeError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    "headers_over_max_size": (
        server,
        frame(
            HEADERS, END_HEADERS, 1, block(REQUEST) + literal(b"x", b"y") * (MAX_FRAME_SIZE // 5)
        ),
        FrameTooLargeError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    # 6.1: DATA on stream 0; 5.1: DATA on an idle stream.
    "data_on_stream_0": (
        server,
        frame(DATA, 0, 0, b"x"),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "data_on_idle_stream": (
        server,
        frame(DATA, 0, 1, b"x"),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "data_on_idle_stream_after_one": (
        server,
        R1 + frame(DATA, 0, 3, b"x"),
        NoSuchStreamError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "client_data_on_idle_stream": (
        client,
        frame(DATA, 0, 3, b"x"),
        NoSuchStreamError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 6.9.1: beyond the stream's window (STREAM_WINDOW), then the connection's.
    "data_beyond_stream_window": (
        server,
        R1
        + frame(DATA, 0, 1, b"x" * MAX_FRAME_SIZE) * (STREAM_WINDOW // MAX_FRAME_SIZE)
        + frame(DATA, 0, 1, b"x"),
        FlowControlError,
        goaway_of(E.FLOW_CONTROL_ERROR),
    ),
    "data_beyond_connection_window": (
        lambda: greeted(False, connection_window=65535),
        R1 + frame(DATA, 0, 1, b"x" * 65535) + frame(DATA, 0, 1, b"x"),
        FlowControlError,
        goaway_of(E.FLOW_CONTROL_ERROR),
    ),
    # 6.9: an increment of 0 on the connection is a connection error (on a
    # stream: see EITHER); overflowing the connection's window is a
    # connection error (the stream's: see test_window_overflow_stream).
    "window_update_0_on_connection": (
        server,
        window_update(0, 0),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "window_update_overflows_connection": (
        server,
        window_update(0, 2**31 - 1),
        FlowControlError,
        goaway_of(E.FLOW_CONTROL_ERROR),
    ),
    "window_update_on_idle_stream": (
        server,
        window_update(1, 1),
        NoSuchStreamError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "window_update_wrong_length": (
        server,
        frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"),
        FrameDataMissingError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    # 5.1.1: stream ids increase; a client's are odd, a server's even.
    "headers_stream_id_lower": (
        server,
        headers(5, REQUEST) + headers(3, REQUEST),
        StreamIDTooLowError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "headers_even_id_from_client": (
        server,
        headers(2, REQUEST),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "headers_on_stream_0": (
        server,
        headers(0, REQUEST),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "headers_new_stream_from_server": (
        client,
        headers(2, RESPONSE),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 6.10: CONTINUATION only right after HEADERS without END_HEADERS, same
    # stream: a connection error PROTOCOL_ERROR (on an idle stream, 5.1, h2's
    # NoSuchStreamError).
    "continuation_without_headers": (
        server,
        frame(CONTINUATION, END_HEADERS, 1, block(REQUEST)),
        NoSuchStreamError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "continuation_after_ping": (
        server,
        frame(HEADERS, 0, 1, block(REQUEST[:2]))
        + ping()
        + frame(CONTINUATION, END_HEADERS, 1, block(REQUEST[2:])),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "continuation_on_other_stream": (
        server,
        frame(HEADERS, 0, 1, block(REQUEST[:2]))
        + frame(CONTINUATION, END_HEADERS, 3, block(REQUEST[2:])),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 5.5: not even an unknown frame inside a field block.
    "unknown_frame_inside_header_block": (
        server,
        frame(HEADERS, 0, 1, block(REQUEST[:2]))
        + frame(0x42, 0, 1, b"x")
        + frame(CONTINUATION, END_HEADERS, 1, block(REQUEST[2:])),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 8.4: PUSH_PROMISE from a client, or to a client that disabled push.
    "push_promise_from_client": (
        server,
        R1 + frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">L", 2) + block(REQUEST)),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "push_promise_push_disabled": (
        client,
        frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">L", 2) + block(REQUEST)),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 6.5, 6.5.2: SETTINGS.
    "settings_enable_push_2": (
        server,
        settings({2: 2}),
        InvalidSettingsValueError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "settings_initial_window_over_2_31": (
        server,
        settings({4: 2**31}),
        InvalidSettingsValueError,
        goaway_of(E.FLOW_CONTROL_ERROR),
    ),
    "settings_max_frame_size_too_small": (
        server,
        settings({5: 16383}),
        InvalidSettingsValueError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "settings_max_frame_size_too_large": (
        server,
        settings({5: 2**24}),
        InvalidSettingsValueError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "settings_length_not_multiple_of_6": (
        server,
        frame(SETTINGS, 0, 0, b"\0\4\0\0\0"),
        FrameDataMissingError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    "settings_on_a_stream": (
        server,
        R1 + frame(SETTINGS, 0, 1),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 6.7: PING.
    "ping_wrong_length": (
        server,
        frame(PING, 0, 0, b"1234567"),
        FrameDataMissingError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    "ping_on_a_stream": (
        server,
        R1 + frame(PING, 0, 1, b"12345678"),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 6.4, 5.1: RST_STREAM.
    "rst_stream_on_idle_stream": (
        server,
        rst_stream(1),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "rst_stream_on_stream_0": (
        server,
        frame(RST_STREAM, 0, 0, b"\0\0\0\0"),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "rst_stream_wrong_length": (
        server,
        R1 + frame(RST_STREAM, 0, 1, b"\0\0\0"),
        FrameDataMissingError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    # 6.3, RFC 7540 5.3.1 (the scheme RFC 9113 5.3.1 deprecates; its frame
    # stays): a self-dependency is a stream error PROTOCOL_ERROR, but a
    # RST_STREAM cannot be sent on an idle stream (6.4): a connection error
    # (5.4.1); in HEADERS, the connection error h2 chose (5.4.1 allows it).
    "priority_idle_stream_depends_on_itself": (
        server,
        priority(3, 3),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "headers_depend_on_themselves": (
        server,
        frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, struct.pack(">LB", 1, 16) + block(REQUEST)),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 6.1, 6.2: padding as long as the payload or longer.
    "data_padding_too_long": (
        server,
        R1 + frame(DATA, PADDED, 1, bytes([5]) + b"abcd"),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "data_padded_without_pad_length": (
        server,
        R1 + frame(DATA, PADDED, 1),
        FrameDataMissingError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    "headers_padding_too_long": (
        server,
        frame(HEADERS, END_HEADERS | PADDED, 1, bytes([200]) + block(REQUEST)),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 6.8: GOAWAY's own format.
    "goaway_wrong_length": (
        server,
        frame(GOAWAY, 0, 0, b"\0\0\0"),
        FrameDataMissingError,
        goaway_of(E.FRAME_SIZE_ERROR),
    ),
    "goaway_on_a_stream": (
        server,
        frame(GOAWAY, 0, 1, struct.pack(">LL", 0, 0)),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # 8.2, 8.3: malformed header blocks (h2 ends the connection: 5.4.1).
    "field_name_uppercase": (
        server,
        headers(1, [*REQUEST, (b"X-Foo", b"1")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "field_name_empty": (
        server,
        headers(1, [*REQUEST, (b"", b"1")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "field_name_with_space": (
        server,
        headers(1, [*REQUEST, (b"x y", b"1")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "pseudo_header_after_regular": (
        server,
        headers(1, [*REQUEST[:3], (b"x", b"1"), REQUEST[3]]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "connection_specific_field": (
        server,
        headers(1, [*REQUEST, (b"connection", b"close")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "transfer_encoding_field": (
        server,
        headers(1, [*REQUEST, (b"transfer-encoding", b"chunked")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "te_other_than_trailers": (
        server,
        headers(1, [*REQUEST, (b"te", b"gzip")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "request_without_method": (
        server,
        headers(1, NOT_REQUEST),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "request_without_path": (
        server,
        headers(1, [f for f in REQUEST if f[0] != b":path"]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "request_without_scheme": (
        server,
        headers(1, [f for f in REQUEST if f[0] != b":scheme"]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "request_empty_path": (
        server,
        headers(1, [(n, b"" if n == b":path" else v) for n, v in REQUEST]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "duplicate_pseudo_header": (
        server,
        headers(1, [*REQUEST, (b":path", b"/x")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "unknown_pseudo_header": (
        server,
        headers(1, [*REQUEST, (b":foo", b"x")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "status_in_request": (
        server,
        headers(1, [*REQUEST, (b":status", b"200")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "value_with_nul": (
        server,
        headers(1, [*REQUEST, (b"x", b"a\x00b")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "value_with_cr": (
        server,
        headers(1, [*REQUEST, (b"x", b"a\rb")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "value_with_lf": (
        server,
        headers(1, [*REQUEST, (b"x", b"a\nb")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "value_with_leading_space": (
        server,
        headers(1, [*REQUEST, (b"x", b" a")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "pseudo_header_in_trailers": (
        server,
        R1 + headers(1, [(b":path", b"/")], end_stream=True),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "trailers_without_end_stream": (
        server,
        R1 + headers(1, [(b"x", b"1")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "content_length_too_short": (
        server,
        headers(1, [*REQUEST, (b"content-length", b"3")]) + frame(DATA, END_STREAM, 1, b"12345"),
        InvalidBodyLengthError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "content_length_too_long": (
        server,
        headers(1, [*REQUEST, (b"content-length", b"3")]) + frame(DATA, END_STREAM, 1, b"12"),
        InvalidBodyLengthError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "content_length_not_a_number": (
        server,
        headers(1, [*REQUEST, (b"content-length", b"x")], end_stream=True),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "response_without_status": (
        client,
        headers(1, [(b"x", b"1")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    "response_with_request_pseudo_header": (
        client,
        headers(1, [*RESPONSE, (b":path", b"/")]),
        ProtocolError,
        goaway_of(E.PROTOCOL_ERROR),
    ),
    # Over SETTINGS_MAX_HEADER_LIST_SIZE (1 << 16), in CONTINUATION frames.
    "header_list_too_large": (
        server,
        frame(HEADERS, 0, 1, block(REQUEST))
        + frame(CONTINUATION, 0, 1, literal(b"x" * 100, b"y" * 100)) * 40
        + frame(CONTINUATION, END_HEADERS, 1, literal(b"x" * 100, b"y" * 100) * 300),
        DenialOfServiceError,
        goaway_of(E.ENHANCE_YOUR_CALM),
    ),
    # 5.1 closed: HEADERS after END_STREAM both ways: h2 makes it a
    # connection error STREAM_CLOSED (which 5.1 allows).
    "headers_on_stream_closed_both_ways": (
        lambda: _closed_both_ways(),
        headers(1, [(b"x", b"1")], end_stream=True),
        StreamClosedError,
        goaway_of(E.STREAM_CLOSED),
    ),
}


def _closed_both_ways() -> TunnelConnection:
    conn = server()
    conn.receive_data(R1_ENDED)
    conn.send_headers(1, RESPONSE, end_stream=True)
    conn.data_to_send()
    return conn


#: name: (the end under test, the bytes, the stream, the RFC's error code, the
#: class of the connection error h2 chose instead): a stream error in RFC 9113,
#: which section 5.4.1 lets an endpoint treat as a connection error.
EITHER: dict[str, tuple[Callable[[], TunnelConnection], bytes, int, int, type[H2Error]]] = {
    # 6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a
    # flow-control window increment of 0 as a stream error ... PROTOCOL_ERROR".
    "window_update_0_on_stream": (
        server,
        R1 + window_update(1, 0),
        1,
        E.PROTOCOL_ERROR,
        ProtocolError,
    ),
    # RFC 7540 5.3.1 (the priority scheme RFC 9113 5.3.1 deprecates; its
    # frame stays, 6.3): "A stream cannot depend on itself.  An endpoint MUST
    # treat this as a stream error (Section 5.4.2) of type PROTOCOL_ERROR."
    "priority_depends_on_itself": (server, R1 + priority(1, 1), 1, E.PROTOCOL_ERROR, ProtocolError),
    # 6.3: "A PRIORITY frame with a length other than 5 octets MUST be treated
    # as a stream error (Section 5.4.2) of type FRAME_SIZE_ERROR."
    "priority_wrong_length": (
        server,
        R1 + frame(PRIORITY, 0, 1, b"\0\0\0\0"),
        1,
        E.FRAME_SIZE_ERROR,
        FrameDataMissingError,
    ),
}


class RefusedTests(SynchronousTestCase):
    """
    Each case of L{REFUSED}: C{receive_data} raises h2's exception class (or
    a subclass) and the end writes exactly the GOAWAY expected.
    """

    def check(self, name: str) -> None:
        make, data, raised, written = REFUSED[name]
        outcome = feed(make(), data)
        self.assertIsNotNone(outcome.raised, f"{name}: accepted")
        assert outcome.raised is not None
        self.assertTrue(
            issubclass(outcome.raised, raised),
            f"{name}: raised {outcome.raised.__name__}, h2 raises {raised.__name__}",
        )
        self.assertEqual(outcome.written, written, name)


class StreamErrorTests(SynchronousTestCase):
    """
    Each case of L{EITHER}: a stream error (that stream reset, the connection
    going on) or, as RFC 9113 section 5.4.1 allows, a connection error (h2's
    exception class raised, a GOAWAY), both with the RFC's error code.
    """

    def check(self, name: str) -> None:
        make, data, stream_id, code, raised = EITHER[name]
        conn = make()
        outcome = feed(conn, data)
        if outcome.raised is None:
            self.assertEqual(outcome.written, [("RST_STREAM", stream_id, code)], name)
            self.assertIn(StreamReset, [type(e) for e in outcome.events], name)
            self.assertEqual(feed(conn, ping()).raised, None, f"{name}: the connection ended")
        else:
            self.assertTrue(issubclass(outcome.raised, raised), f"{name}: {outcome.raised}")
            self.assertEqual(outcome.written, [("GOAWAY", 0, code)], name)


def _add_case(name: str) -> None:
    def test(self: RefusedTests) -> None:
        self.check(name)

    test.__name__ = f"test_{name}"
    test.__doc__ = f"Refused: {name.replace('_', ' ')}."
    setattr(RefusedTests, test.__name__, test)


for _name in REFUSED:
    _add_case(_name)


def _add_either(name: str) -> None:
    def test(self: StreamErrorTests) -> None:
        self.check(name)

    test.__name__ = f"test_{name}"
    test.__doc__ = f"A stream error, or a connection error: {name.replace('_', ' ')}."
    setattr(StreamErrorTests, test.__name__, test)


for _name in EITHER:
    _add_either(_name)


class SendSideTests(SynchronousTestCase):
    """What the tunnel's ends rely on when they send."""

    def test_secrets_never_indexed(self) -> None:
        """
        Cookies, credentials and unique values go as HPACK never-indexed
        literals (RFC 7541 7.1.3): in requests and in responses.
        """
        conn = greeted(True)
        conn.send_headers(
            1,
            [
                *REQUEST,
                (b"cookie", b"a=1"),
                (b"authorization", b"Bearer x"),
                (b"x-request-id", b"r1"),
                (b"accept", b"*/*"),
            ],
        )
        fields = Decoder().decode(parse(conn.data_to_send())[0].payload, raw=True)
        never = {bytes(f[0]) for f in fields if isinstance(f, NeverIndexedHeaderTuple)}
        self.assertEqual(never, {b"cookie", b"authorization", b"x-request-id"})
        conn = server()
        conn.receive_data(R1)
        conn.send_headers(1, [*RESPONSE, (b"set-cookie", b"s=1"), (b"set-cookie", b"t=2")])
        fields = Decoder().decode(parse(conn.data_to_send())[0].payload, raw=True)
        self.assertEqual(
            [type(f) for f in fields if f[0] == b"set-cookie"], [NeverIndexedHeaderTuple] * 2
        )

    def test_unsendable_fields(self) -> None:
        """A block the far end would refuse is not sent: L{UnsendableFields}."""
        conn = greeted(True)
        for bad in ([(b"X-Up", b"1")], [(b"connection", b"close")], [(b"x", b"a\nb")]):
            with self.assertRaises(UnsendableFields):
                conn.send_headers(1, REQUEST + bad)
            self.assertEqual(conn.data_to_send(), b"")

    def test_send_limits(self) -> None:
        """
        DATA over the peer's frame size or the window is refused, not sent.
        """
        conn = greeted(True)
        conn.send_headers(1, REQUEST)
        conn.data_to_send()
        self.assertEqual(conn.local_flow_control_window(1), 65535)
        self.assertEqual(conn.max_outbound_frame_size, 16384)
        self.assertRaises(FrameTooLargeError, conn.send_data, 1, b"x" * 16385)
        for _ in range(3):
            conn.send_data(1, b"x" * 16384)
        self.assertRaises(FlowControlError, conn.send_data, 1, b"x" * 16384)
        conn.send_data(1, b"x" * 16383)
        self.assertEqual(conn.local_flow_control_window(1), 0)
        self.assertEqual(sum(len(f.payload) for f in parse(conn.data_to_send())), 65535)

    def test_after_reset(self) -> None:
        """
        On a stream we reset, sending raises an H2Error (the tunnel drops
        what it had queued) and writes nothing.
        """
        conn = greeted(True)
        conn.send_headers(1, REQUEST)
        conn.reset_stream(1, E.CANCEL)
        conn.data_to_send()
        for call in (
            lambda: conn.send_data(1, b"x"),
            lambda: conn.end_stream(1),
            lambda: conn.reset_stream(1, E.CANCEL),
            lambda: conn.send_headers(1, [(b"x", b"1")], end_stream=True),
        ):
            self.assertRaises(StreamClosedError, call)
        try:
            conn.acknowledge_received_data(5, 1)
        except H2Error:
            pass
        self.assertEqual(conn.data_to_send(), b"")
        self.assertRaises(NoSuchStreamError, conn.send_data, 99, b"x")
