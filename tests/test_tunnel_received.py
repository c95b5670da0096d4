"""
The tunnel's check of received header blocks (L{appproxy.tunnel.received})
against the judge it replaces: h2's own normalisation and validation of
received blocks, block by block; and a tunnel connection that refuses a
bad block from its peer as h2 did, with a protocol error of the connection.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, normalize_inbound_headers, validate_headers
from hpack import Decoder, Encoder
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connection import TunnelConnection
from appproxy.tunnel.received import (
    REQUEST_BLOCK,
    RESPONSE_BLOCK,
    TRAILER_BLOCK,
    TunnelDecoder,
    received_fields,
    received_problem,
)

FLAGS = {
    REQUEST_BLOCK: HeaderValidationFlags(
        is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
    ),
    RESPONSE_BLOCK: HeaderValidationFlags(
        is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
    ),
    TRAILER_BLOCK: HeaderValidationFlags(
        is_client=True, is_trailer=True, is_response_header=False, is_push_promise=False
    ),
}

_nasty = st.sampled_from(b"\x00\r\n \t:Aa0-@[`{\x7f\xc3\xa9+,_;")
names = st.one_of(
    st.sampled_from(
        [
            b":method",
            b":scheme",
            b":path",
            b":authority",
            b":status",
            b":protocol",
            b":other",
            b":",
            b"host",
            b"te",
            b"cookie",
            b"connection",
            b"transfer-encoding",
            b"x-a",
            b"X-A",
            b"a:b",
            b"",
            b"content-length",
        ]
    ),
    st.binary(max_size=6),
    st.lists(_nasty, max_size=5).map(bytes),
)
values = st.one_of(
    st.sampled_from(
        [
            b"",
            b"GET",
            b"CONNECT",
            b"https",
            b"/",
            b"h.example",
            b"other.example",
            b"200",
            b"trailers",
            b"TRAILERS",
            b"gzip",
            b"websocket",
            b" a",
            b"\ta",
            b"a ",
            b"a\t",
            b"a b",
            b"a\x00",
            b"a\nb",
            b"\rb",
        ]
    ),
    st.binary(max_size=6),
    st.lists(_nasty, max_size=5).map(bytes),
)
# Blocks that are mostly plausible requests and responses, with one thing changed.
_request = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"h.example"),
    (b":path", b"/"),
    (b"x-a", b"1"),
]
_response = [(b":status", b"200"), (b"content-type", b"text/plain")]
# Mostly plausible fields, so that an edit is often the block's only fault.
_fair_names = st.sampled_from(
    [b"x-b", b"host", b"te", b"cookie", b"content-type", b":path", b":authority", b":protocol"]
)
_fair_values = st.sampled_from([b"1", b"h.example", b"trailers", b"a=1", b"/", b"", b"websocket"])
_fields = st.one_of(
    st.tuples(_fair_names, _fair_values),
    st.tuples(_fair_names, values),
    st.tuples(names, _fair_values),
)
_edits = st.lists(st.tuples(st.integers(0, 7), _fields, st.booleans()), min_size=1, max_size=3)
_bases = st.sampled_from(
    [
        (_request, REQUEST_BLOCK),
        ([(b":method", b"CONNECT"), *_request[1:]], REQUEST_BLOCK),
        (_response, RESPONSE_BLOCK),
        ([(b"x-a", b"1")], TRAILER_BLOCK),
    ]
)
kinds = st.sampled_from([REQUEST_BLOCK, RESPONSE_BLOCK, TRAILER_BLOCK])
cases = st.one_of(
    st.tuples(st.lists(st.tuples(names, values), max_size=8), kinds),
    st.tuples(_bases, _edits).map(lambda t: (_edit(t[0][0], t[1]), t[0][1])),
)


def _edit(
    base: list[tuple[bytes, bytes]], edits: list[tuple[int, tuple[bytes, bytes], bool]]
) -> list[tuple[bytes, bytes]]:
    block = list(base)
    for at, field, replace in edits:
        at = min(at, len(block))
        if replace and at < len(block):
            block[at] = field
        else:
            block.insert(at, field)
    return block


def h2_outcome(block: list[tuple[bytes, bytes]], kind: str) -> list[Any] | None:
    """What h2 makes of a received block: the block, or None if it refuses it."""
    flags = FLAGS[kind]
    try:
        return list(validate_headers(normalize_inbound_headers(block, flags), flags))
    except ProtocolError:
        return None


def our_outcome(block: list[tuple[bytes, bytes]], kind: str) -> list[Any] | None:
    names = [name for name, _ in block]
    if b"cookie" in names:
        block = received_fields(block)
    return None if received_problem(block, kind) is not None else block


class ReceivedProblemTests(SynchronousTestCase):
    @settings(max_examples=3000)
    @given(cases)
    def test_as_h2_judges(self, case: tuple[list[tuple[bytes, bytes]], str]) -> None:
        """Every block: refused exactly when h2 refuses it, and the same fields."""
        block, kind = case
        self.assertEqual(our_outcome(block, kind), h2_outcome(block, kind), (block, kind))

    def test_plain_blocks(self) -> None:
        self.assertIsNone(received_problem(_request, REQUEST_BLOCK))
        self.assertIsNone(received_problem(_response, RESPONSE_BLOCK))
        self.assertIsNone(received_problem([(b"x-a", b"b")], TRAILER_BLOCK))
        connect = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/ws"),
            (b":authority", b"h.example"),
        ]
        self.assertIsNone(received_problem(connect, REQUEST_BLOCK))
        te = [*_request, (b"te", b"TRAILERS"), (b"host", b"h.example")]
        self.assertIsNone(received_problem(te, REQUEST_BLOCK))
        self.assertIsNotNone(h2_outcome(te, REQUEST_BLOCK))

    def test_refused(self) -> None:
        for block, kind in [
            ([*_request, (b"x-b", b"a\r\nb")], REQUEST_BLOCK),
            ([*_request, (b"X-B", b"a")], REQUEST_BLOCK),
            ([*_request, (b":path", b"/")], REQUEST_BLOCK),
            ([(b"x-a", b"1"), *_request], REQUEST_BLOCK),
            ([*_request, (b"host", b"other.example")], REQUEST_BLOCK),
            ([*_request, (b"te", b"gzip")], REQUEST_BLOCK),
            ([*_response, (b"connection", b"close")], RESPONSE_BLOCK),
            ([(b"content-type", b"text/plain")], RESPONSE_BLOCK),
            ([(b":status", b"200")], TRAILER_BLOCK),
            ([*_response, (b"x-b", b" padded")], RESPONSE_BLOCK),
            ([*_response, (b"x-b", b"\tpadded")], RESPONSE_BLOCK),
            ([*_request, (b"host", b"h.example"), (b"host", b"h.example")], REQUEST_BLOCK),
            ([(b":status", b"200"), *_request], REQUEST_BLOCK),
            ([*_request[:3], (b":path", b"")], REQUEST_BLOCK),
            ([*_request[:3], (b":protocol", b"websocket")], REQUEST_BLOCK),
            ([(b":method", b"CONNECT"), (b":path", b"/"), *_request[2:3]], REQUEST_BLOCK),
            (_request[:3], REQUEST_BLOCK),
        ]:
            self.assertIsNotNone(received_problem(block, kind), block)
            self.assertIsNone(h2_outcome(block, kind), block)


class ConnectionTests(SynchronousTestCase):
    """A tunnel connection checks what its peer sends, as h2 did."""

    def _pair(self) -> tuple[H2Connection, TunnelConnection]:
        # The peer: a plain h2 client that sends whatever it is given.
        client = H2Connection(H2Configuration(client_side=True, validate_outbound_headers=False))
        server = TunnelConnection(client_side=False)
        client.initiate_connection()
        server.initiate_connection()
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        return client, server

    def test_valid_request(self) -> None:
        client, server = self._pair()
        client.send_headers(1, [*_request, (b"cookie", b"a=1"), (b"cookie", b"b=2")], True)
        events = server.receive_data(client.data_to_send())
        [request] = [e for e in events if isinstance(e, RequestReceived)]
        self.assertEqual(
            request.headers,
            [*_request, (b"cookie", b"a=1; b=2")],
        )

    def test_invalid_request(self) -> None:
        """A block h2 would refuse ends the connection: GOAWAY, protocol error."""
        client, server = self._pair()
        client.send_headers(1, [*_request, (b"x-b", b"a\x00b")], True)
        self.assertRaises(ProtocolError, server.receive_data, client.data_to_send())
        self.assertIn(b"\x07", server.data_to_send()[3:4])  # a GOAWAY frame


def _decoded(decoder: Decoder, block: bytes) -> Any:
    """What a decoder makes of a block: its fields (types too), or its error's type."""
    try:
        return [(type(h), h[0], h[1], h.indexable) for h in decoder.decode(block, raw=True)]
    except Exception as e:
        return type(e)


_header_lists = st.lists(
    st.tuples(
        st.sampled_from([b":method", b":path", b"x-a", b"cookie", b"content-type"])
        | st.binary(min_size=1, max_size=8),
        st.sampled_from([b"GET", b"/", b"1", b""]) | st.binary(max_size=200),
        st.booleans(),
    ),
    max_size=12,
)


class TunnelDecoderTests(SynchronousTestCase):
    """L{TunnelDecoder} decodes as hpack's decoder does, block after block."""

    @settings(max_examples=500)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("encoded"), _header_lists, st.booleans()),
                st.tuples(st.just("bytes"), st.binary(max_size=40), st.just(False)),
            ),
            min_size=1,
            max_size=6,
        ),
        st.sampled_from([4096, 256, 0]),
        st.sampled_from([1 << 16, 300]),
    )
    def test_as_hpack_decodes(
        self, blocks: list[tuple[str, Any, bool]], table_size: int, list_size: int
    ) -> None:
        encoder = Encoder()
        encoder.header_table_size = table_size
        ours, theirs = TunnelDecoder(list_size), Decoder(list_size)
        for kind, content, huffman in blocks:
            if kind == "encoded":
                block = encoder.encode([(n, v, never) for n, v, never in content], huffman)
            else:
                block = content
            self.assertEqual(_decoded(ours, block), _decoded(theirs, block), block)
            self.assertEqual(
                list(ours.header_table.dynamic_entries), list(theirs.header_table.dynamic_entries)
            )
            if kind == "bytes":
                # A failed block may leave the two tables apart; start afresh.
                encoder = Encoder()
                encoder.header_table_size = table_size
                ours, theirs = TunnelDecoder(list_size), Decoder(list_size)
