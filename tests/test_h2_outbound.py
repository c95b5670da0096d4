"""
The public HTTP/2 connection's short way of sending a response
(L{appproxy.frontend.h2_outbound}) against h2's own: the same requests reach
a stock h2 server connection (configured as L{GuardedH2Connection} configures
it: the tunnel's encoder, outbound header checks off) and a lean one, the
same responses are sent on both, and the bytes, the errors raised and the
state left behind (each stream's state, how it closed, both flow-control
windows) are the same.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.h2_inbound import CheckedInbound, adopt
from appproxy.frontend.h2_outbound import LeanOutbound, lean_outbound
from appproxy.tunnel.fields import TunnelEncoder

_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"app.example"),
    (b":path", b"/"),
]


def _pair(window: int, frame_size: int) -> tuple[H2Connection, list[H2Connection]]:
    """A client, and a stock and a lean server it has greeted."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.local_settings.update(
        {
            SettingCodes.INITIAL_WINDOW_SIZE: window,
            SettingCodes.MAX_FRAME_SIZE: frame_size,
        }
    )
    client.initiate_connection()
    servers = []
    for lean in (False, True):
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.config.normalize_outbound_headers = False
        conn.config.validate_outbound_headers = False
        conn.encoder = TunnelEncoder()
        adopt(conn)
        if lean:
            lean_outbound(conn)
        conn.initiate_connection()
        servers.append(conn)
    hello = client.data_to_send()
    for conn in servers:
        conn.receive_data(hello)
        conn.data_to_send()
    return client, servers


def _state(conn: H2Connection) -> Any:
    streams = {
        sid: (
            s.state_machine.state,
            s.state_machine.headers_sent,
            s.state_machine.stream_closed_by,
            s.outbound_flow_control_window,
            s.request_method,
        )
        for sid, s in conn.streams.items()
    }
    return conn.state_machine.state, conn.outbound_flow_control_window, streams


def _apply(conn: H2Connection, op: tuple[Any, ...]) -> Any:
    """One step, and what it gave: the bytes to send or the error's type."""
    name, sid, *args = op
    try:
        getattr(conn, name)(sid, *args)
    except Exception as e:
        conn.data_to_send()
        return type(e).__name__
    return bytes(conn.data_to_send())


_fields = st.lists(
    st.tuples(
        st.sampled_from([b"content-type", b"x-request-id", b"set-cookie", b"x-a", b"etag"]),
        st.binary(min_size=0, max_size=40).map(lambda b: bytes(c % 94 + 33 for c in b)),
    ),
    max_size=6,
)
_status = st.sampled_from([b"200", b"204", b"404", b"103", b"100"])
_op = st.one_of(
    st.tuples(
        st.just("send_headers"),
        st.sampled_from([1, 3, 5]),
        st.builds(lambda s, f: [(b":status", s), *f], _status, _fields),
        st.booleans(),
    ),
    st.tuples(
        st.just("send_data"),
        st.sampled_from([1, 3, 5]),
        st.integers(0, 300).map(lambda n: b"d" * n),
        st.booleans(),
    ),
    st.tuples(st.just("end_stream"), st.sampled_from([1, 3, 5])),
    st.tuples(st.just("reset_stream"), st.sampled_from([1, 3, 5])),
)


class SameAsH2Tests(SynchronousTestCase):
    """The lean connection sends and keeps what h2's own would."""

    @settings(max_examples=400, deadline=None)
    @given(
        ends=st.lists(st.booleans(), min_size=2, max_size=2),
        window=st.integers(0, 700),
        ops=st.lists(_op, max_size=12),
    )
    def test_same_bytes_errors_and_state(
        self, ends: list[bool], window: int, ops: list[tuple[Any, ...]]
    ) -> None:
        client, servers = _pair(window, 16384)
        for sid, end in zip((1, 3), ends, strict=True):
            client.send_headers(sid, _REQUEST, end_stream=end)
        request = client.data_to_send()
        for conn in servers:
            conn.receive_data(request)
            conn.data_to_send()
        stock, lean = servers
        self.assertIs(type(lean), LeanOutbound)
        for op in ops:
            self.assertEqual(_apply(stock, op), _apply(lean, op), op)
            self.assertEqual(_state(stock), _state(lean), op)

    def test_header_block_split(self) -> None:
        """A header block over the client's frame size goes as HEADERS and CONTINUATIONs."""
        client, (stock, lean) = _pair(65535, 16384)
        client.send_headers(1, _REQUEST, end_stream=True)
        request = client.data_to_send()
        value = bytes(range(33, 127)) * 40
        fields = [(b":status", b"200"), *[(b"x-%d" % i, value) for i in range(9)]]
        sent = []
        for conn in (stock, lean):
            conn.receive_data(request)
            conn.data_to_send()
            conn.send_headers(1, fields, end_stream=True)
            sent.append(bytes(conn.data_to_send()))
        self.assertEqual(sent[0], sent[1])
        self.assertGreater(len(sent[1]), 2 * 16384)  # two CONTINUATIONs at least
        events = client.receive_data(sent[1])
        self.assertEqual(events[0].headers, fields)  # type: ignore[attr-defined]
        self.assertEqual(_state(stock), _state(lean))


class OnlyAdoptedTests(SynchronousTestCase):
    def test_refuses_other_connections(self) -> None:
        """Only a connection adopt() made a CheckedInbound is made lean."""
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.assertRaises(TypeError, lean_outbound, conn)
        adopt(conn)
        self.assertIs(type(conn), CheckedInbound)
        lean_outbound(conn)
        self.assertIs(type(conn), LeanOutbound)
