"""
The public HTTP/2 connection's short way of receiving a request's HEADERS
frame (L{appproxy.frontend.h2_requests}) against h2's way on an adopted
connection (L{appproxy.frontend.h2_inbound}): the same frames, one at a
time, to both; the same events (and their fields), the same errors, the same
state (streams, their states and expected lengths, the highest stream id,
the priority of each stream) and the same bytes to send.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame, SettingsFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.h2_inbound import CheckedInbound, adopt
from appproxy.frontend.h2_requests import LeanConnection, lean

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()

_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"app.example"),
    (b":path", b"/"),
]
_blocks = st.sampled_from(
    [
        _REQUEST,
        [*_REQUEST, (b"content-length", b"3")],
        [*_REQUEST, (b"cookie", b"a=1"), (b"x-a", b"b"), (b"cookie", b"b=2")],
        [*_REQUEST, (b"content-length", b"x")],
        [(b":status", b"200"), *_REQUEST],
        [(b":status", b"100")],
        [*_REQUEST, (b"Upper", b"a")],
        [*_REQUEST, (b"connection", b"close")],
        _REQUEST[:2],
    ]
)
_frames = st.one_of(
    st.tuples(
        st.just("headers"),
        st.sampled_from([1, 2, 3, 5, 7, 9, 11, 13, 15]),
        _blocks,
        st.booleans(),
        st.one_of(st.none(), st.tuples(st.sampled_from([0, 1, 3, 5]), st.integers(1, 256))),
    ),
    st.tuples(st.just("data"), st.sampled_from([1, 3, 5]), st.booleans()),
    st.tuples(st.just("rst"), st.sampled_from([1, 3, 5])),
)


def _server(short: bool, streams: int) -> H2Connection:
    conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    adopt(conn)
    if short:
        lean(conn)
    conn.local_settings.update({SettingCodes.MAX_CONCURRENT_STREAMS: streams})
    conn.initiate_connection()
    conn.data_to_send()
    conn.receive_data(PREFACE)
    conn.data_to_send()
    return conn


def _frame(op: tuple[Any, ...], encoder: Encoder) -> bytes:
    frame: Frame
    if op[0] == "headers":
        _, sid, block, end, priority = op
        frame = HeadersFrame(sid, flags=["END_HEADERS"] + (["END_STREAM"] if end else []))
        frame.data = encoder.encode(block)
        if priority is not None:
            frame.flags.add("PRIORITY")
            frame.depends_on, frame.stream_weight = priority[0], priority[1] - 1
    elif op[0] == "data":
        frame = DataFrame(op[1], data=b"abc", flags=["END_STREAM"] if op[2] else [])
    else:
        frame = RstStreamFrame(op[1])
    return frame.serialize()


def _event(event: Any) -> Any:
    fields = {
        key: _event(value) if hasattr(value, "stream_id") else value
        for key, value in vars(event).items()
    }
    return type(event).__name__, sorted(fields.items(), key=lambda kv: kv[0])


def _state(conn: H2Connection) -> Any:
    streams = {
        sid: (
            s.state_machine.state,
            s.state_machine.client,
            s.state_machine.headers_received,
            s._expected_content_length,
            s.inbound_flow_control_window,
            s.outbound_flow_control_window,
            s.max_outbound_frame_size,
        )
        for sid, s in conn.streams.items()
    }
    return (
        conn.state_machine.state,
        conn.highest_inbound_stream_id,
        streams,
        dict(conn._closed_streams),
        bytes(conn.data_to_send()),
    )


def _outcome(conn: H2Connection, data: bytes) -> Any:
    try:
        return [_event(e) for e in conn.receive_data(data)]
    except Exception as e:
        return type(e).__name__


class SameAsH2Tests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None)
    @given(ops=st.lists(_frames, max_size=10), streams=st.integers(1, 4), opened=st.booleans())
    def test_same_events_errors_and_state(
        self, ops: list[tuple[Any, ...]], streams: int, opened: bool
    ) -> None:
        """Any frames in turn: the same events, errors and state as h2's way."""
        stock, short = _server(False, streams), _server(True, streams)
        self.assertIs(type(short), LeanConnection)
        encoder = Encoder()
        if opened:
            # A first request (h2's way on both: the connection was idle)
            # and its stream reset: later requests may take the short way.
            ops = [("headers", 1, _REQUEST, True, None), ("rst", 1), *ops]
        for op in ops:
            data = _frame(op, encoder)
            outcome = _outcome(stock, data)
            self.assertEqual(outcome, _outcome(short, data), op)
            self.assertEqual(_state(stock), _state(short), op)
            if isinstance(outcome, str):
                break

    def test_requests_in_turn(self) -> None:
        """Requests one after another on an open connection: each as h2 gives it."""
        stock, short = _server(False, 100), _server(True, 100)
        encoder = Encoder()
        for sid in range(1, 40, 2):
            block = [*_REQUEST, (b"content-length", b"3"), (b"cookie", b"a"), (b"cookie", b"b")]
            data = _frame(("headers", sid, block, sid % 3 == 0, None), encoder)
            events = _outcome(short, data)
            self.assertEqual(_outcome(stock, data), events)
            self.assertEqual(events[0][0], "RequestReceived")
            self.assertEqual(_state(stock), _state(short))


class OnlyAdoptedTests(SynchronousTestCase):
    def test_refuses_other_connections(self) -> None:
        """Only a connection adopt() made a CheckedInbound is made lean."""
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.assertRaises(TypeError, lean, conn)
        adopt(conn)
        self.assertIs(type(conn), CheckedInbound)
        lean(conn)
        self.assertIs(type(conn), LeanConnection)
