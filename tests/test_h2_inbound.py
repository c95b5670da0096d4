"""
The public HTTP/2 connection's check of received header blocks
(L{appproxy.frontend.h2_inbound}) against the judge it replaces: h2's own
normalisation and validation, as twisted.web configures h2 for a server.
The same bytes go to a stock h2 server connection and to an adopted one:
each block is refused by both or by neither, and the fields that reach
twisted.web are the same.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, RequestReceived, TrailersReceived
from h2.exceptions import ProtocolError
from hpack import Encoder
from hyperframe.frame import HeadersFrame, SettingsFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from appproxy.frontend.h2_guard import GuardedH2Connection
from appproxy.frontend.h2_inbound import CheckedInbound, adopt
from appproxy.tunnel.received import REQUEST_BLOCK, TRAILER_BLOCK
from tests.test_tunnel_received import _request, cases

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
_OPENING = [*_request, (b"content-type", b"text/plain")]


def _server(checked: bool) -> H2Connection:
    # As twisted.web's H2Connection makes it.
    conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    if checked:
        adopt(conn)
    conn.initiate_connection()
    conn.data_to_send()
    return conn


def _wire(block: list[tuple[bytes, bytes]], kind: str) -> bytes:
    """A client's preface and the block (after an opening request if trailers)."""
    encoder = Encoder()
    frames = [PREFACE]
    if kind == TRAILER_BLOCK:
        opening = HeadersFrame(1, flags=["END_HEADERS"])
        opening.data = encoder.encode(_OPENING)
        frames.append(opening.serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
    headers.data = encoder.encode(block)
    frames.append(headers.serialize())
    return b"".join(frames)


def _outcome(checked: bool, data: bytes) -> Any:
    """The header events' fields, or C{"refused"} (a protocol error)."""
    conn = _server(checked)
    try:
        events = conn.receive_data(data)
    except ProtocolError:
        return "refused"
    return [
        [(bytes(name), bytes(value)) for name, value in event.headers]
        for event in events
        if isinstance(event, RequestReceived | TrailersReceived)
    ]


class InboundTests(SynchronousTestCase):
    @settings(max_examples=2000, deadline=None)
    @given(cases)
    def test_as_h2_judges(self, case: tuple[list[tuple[bytes, bytes]], str]) -> None:
        """Every request block and trailer block: the same outcome as h2's own checks."""
        block, kind = case
        # A server receives requests and trailers only.
        kind = TRAILER_BLOCK if kind == TRAILER_BLOCK else REQUEST_BLOCK
        data = _wire(block, kind)
        self.assertEqual(_outcome(True, data), _outcome(False, data), (block, kind))

    @given(st.lists(st.tuples(st.sampled_from([b"cookie", b"x-a"]), st.binary(max_size=5))))
    def test_cookies_joined(self, extra: list[tuple[bytes, bytes]]) -> None:
        """Fields after a valid request's: the same as h2 makes of them (cookies joined)."""
        data = _wire([*_request, *extra], REQUEST_BLOCK)
        self.assertEqual(_outcome(True, data), _outcome(False, data))

    def test_refused(self) -> None:
        for block in (
            [*_request, (b"X-B", b"a")],
            [*_request, (b"x-b", b"a\x00b")],
            [*_request, (b"connection", b"close")],
            [(b"x-a", b"1"), *_request],
            _request[:2],
        ):
            data = _wire(block, REQUEST_BLOCK)
            self.assertEqual(_outcome(True, data), "refused", block)
            self.assertEqual(_outcome(False, data), "refused", block)

    def test_public_connection(self) -> None:
        """twisted.web's connection, guarded, is adopted: a bad block ends it with GOAWAY."""
        clock = MemoryReactorClock()
        server = GuardedH2Connection(clock)
        server.start_guard()
        channel: Any = server
        channel.requestFactory = http.Request
        channel.callLater = clock.callLater
        channel.timeOut = None
        transport = StringTransport()
        server.makeConnection(transport)
        transport.registerProducer(server, True)
        self.assertIsInstance(server.conn, CheckedInbound)
        client = H2Connection(H2Configuration(client_side=True, validate_outbound_headers=False))
        client.initiate_connection()
        client.send_headers(1, [*_request, (b"x-b", b"a\rb")], end_stream=True)
        server.dataReceived(client.data_to_send())
        events = client.receive_data(transport.value())
        [ended] = [e for e in events if isinstance(e, ConnectionTerminated)]
        self.assertEqual(ended.error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(server.streams, {})

    def test_only_servers(self) -> None:
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.assertRaises(ValueError, adopt, client)
