"""
The tunnel's field decisions (L{appproxy.tunnel.fields}) against the real
judges: h2's own inbound validation, Twisted's HTTP client, hpack's decoder.
"""

from __future__ import annotations

import re
from typing import Any

from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import _ensureValidMethod, _ensureValidURI

from appproxy.tunnel.fields import (
    CONTROL_FIELD,
    NEVER_INDEXED,
    TunnelEncoder,
    _first_problem,
    _plainly_fine,
    field_problem,
    protect,
    request_line_problem,
    user_fields,
)

TOKEN = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
RESPONSE = HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
)

# Bytes that matter to the rules, and a few that do not.
_nasty = st.sampled_from(b"\x00\r\n \t:Aa0-@\x7f\xc3\xa9+,_")
names = st.one_of(
    st.sampled_from(
        [b"content-length", b"te", b"connection", b"x-a", b"set-cookie", b"keep-alive"]
    ),
    st.lists(_nasty, max_size=6).map(bytes),
)
values = st.one_of(
    st.sampled_from([b"12", b"trailers", b"+2", b"1_0", b"2, 2"]),
    st.lists(_nasty, max_size=6).map(bytes),
)
fields = st.lists(st.tuples(names, values), max_size=4)
# Blocks for the fast path: what its joins and counts could be fooled by
# (LF, the separator; pseudo-header fields in and out of place).
_joiner = st.sampled_from(b"\x00\r\n \t:aZ-")
block_names = st.one_of(
    names,
    st.sampled_from([b":path", b":status", b":method", b":other", b"a\nb", b"a\n", b"\n"]),
    st.lists(_joiner, max_size=4).map(bytes),
)
block_values = st.one_of(
    values,
    st.sampled_from([b"a\nb", b"\n", b" a", b"a\t", b"", b"0"]),
    st.lists(_joiner, max_size=4).map(bytes),
)
blocks = st.lists(st.tuples(block_names, block_values), max_size=6)


def h2_accepts(block: list[tuple[bytes, bytes]]) -> bool:
    try:
        list(validate_headers([(b":status", b"200"), *block], RESPONSE))
    except ProtocolError:
        return False
    lengths = [v for n, v in block if n == b"content-length"]
    # h2 also reads content-length as an integer (and a body of another
    # length ends the connection); only plain digits are ours to send.
    return len(lengths) <= 1 and all(v.isdigit() for v in lengths)


def twisted_accepts(method: bytes, path: bytes) -> bool:
    try:
        _ensureValidMethod(method)
        _ensureValidURI(b"http://h" + path)
    except ValueError:
        return False
    return True


class FieldProblemTests(SynchronousTestCase):
    @given(fields)
    def test_agrees_with_h2(self, block: list[tuple[bytes, bytes]]) -> None:
        """
        Nothing h2 refuses on the far end (as an error of the whole
        connection) passes the check; beyond that, the check refuses only
        field names that are not HTTP tokens.
        """
        if field_problem(block) is None:
            self.assertTrue(h2_accepts(block), block)
        elif h2_accepts(block):
            self.assertFalse(all(TOKEN.match(n) for n, _ in block), block)

    def test_examples(self) -> None:
        self.assertIsNone(field_problem([(b"x-a", b"b c"), (b"content-length", b"10")]))
        for bad in (
            [(b"x-bad", b"a\x00b")],
            [(b"X-Upper", b"1")],
            [(b"x-a", b" lead")],
            [(b"content-length", b"+2")],
            [(b"content-length", b"2"), (b"content-length", b"2")],
            [(b"connection", b"close")],
        ):
            self.assertIsNotNone(field_problem(bad), bad)


class FastPathTests(SynchronousTestCase):
    @given(blocks)
    def test_same_verdict(self, block: list[tuple[bytes, bytes]]) -> None:
        """
        The whole-block fast path clears no block the field-by-field check
        refuses, and field_problem says what the field-by-field check says.
        """
        if _plainly_fine(block):
            self.assertIsNone(_first_problem(block), block)
        self.assertEqual(field_problem(block), _first_problem(block))
        self.assertEqual(field_problem(iter(block)), _first_problem(block))

    def test_usual_blocks_cleared(self) -> None:
        """The blocks of every request and response take the fast path."""
        request = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1:8080"),
            (b":path", b"/a?b=c"),
            (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
        ]
        response = [(b":status", b"200"), (b"content-length", b"1024"), (b"x-a", b"")]
        self.assertTrue(_plainly_fine(request))
        self.assertTrue(_plainly_fine(response))
        for bad in (
            [(b"x-a", b"1"), (b":path", b"/")],
            [(b"content-length", b"1"), (b"content-length", b"1")],
            [(b"x-a", b"a\nb")],
            [(b"x-a\nx-b", b"1")],
            [(b"x-a", b"1 ")],
            [(b"", b"1")],
        ):
            self.assertFalse(_plainly_fine(bad), bad)
            self.assertIsNotNone(field_problem(bad), bad)


class RequestLineTests(SynchronousTestCase):
    @given(
        st.lists(_nasty, min_size=0, max_size=5).map(bytes),
        st.lists(_nasty, min_size=0, max_size=5).map(lambda b: b"/" + bytes(b)),
    )
    def test_agrees_with_twisted(self, method: bytes, path: bytes) -> None:
        """What passes is what Twisted's HTTP client (the connector's) sends."""
        self.assertEqual(request_line_problem(method, path) is None, twisted_accepts(method, path))


class ProtectTests(SynchronousTestCase):
    @given(st.lists(st.tuples(st.sampled_from([*sorted(NEVER_INDEXED), b"x-a"]), values)))
    def test_never_indexed_on_the_wire(self, block: list[tuple[bytes, bytes]]) -> None:
        """
        hpack encodes the protected names as never-indexed literals: the
        decoder says so, and the encoder's table never holds them.
        """
        encoder = Encoder()
        data = encoder.encode(protect(block))
        decoded = Decoder().decode(data, raw=True)
        self.assertEqual([(n, v) for n, v in decoded], block)
        for header in decoded:
            # An empty value may go as a static table entry: no secret there.
            if header[1]:
                self.assertEqual(
                    isinstance(header, NeverIndexedHeaderTuple), header[0] in NEVER_INDEXED
                )
        table_names = {n for n, _ in encoder.header_table.dynamic_entries}
        self.assertFalse(table_names & NEVER_INDEXED)

    @given(st.lists(st.tuples(st.sampled_from([*sorted(NEVER_INDEXED), b"x-a"]), values)))
    def test_encoder_picks_by_name(self, block: list[tuple[bytes, bytes]]) -> None:
        """
        The tunnel's encoder sends the names in NEVER_INDEXED as
        never-indexed literals from plain tuples, with their values as they
        are (no Huffman coding to undo at the far end), and never puts them
        in its table.
        """
        encoder = TunnelEncoder()
        data = encoder.encode(block)
        decoded = Decoder().decode(data, raw=True)
        self.assertEqual([(n, v) for n, v in decoded], block)
        for header in decoded:
            if header[1]:
                self.assertEqual(
                    isinstance(header, NeverIndexedHeaderTuple), header[0] in NEVER_INDEXED
                )
                if header[0] in NEVER_INDEXED:
                    self.assertIn(header[1], data)
        table_names = {n for n, _ in encoder.header_table.dynamic_entries}
        self.assertFalse(table_names & NEVER_INDEXED)

    def test_user_fields_drop_tunnel_namespace(self) -> None:
        block = [
            (CONTROL_FIELD, b"settings"),
            (b"appproxy-app", b"x"),
            (b":path", b"/"),
            (b"x-appproxy-user", b"kept: the service strips those itself"),
            (b"accept", b"*/*"),
        ]
        self.assertEqual(
            user_fields(block),
            [(b"x-appproxy-user", b"kept: the service strips those itself"), (b"accept", b"*/*")],
        )


class TunnelEncoderTests(SynchronousTestCase):
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([*sorted(NEVER_INDEXED), b"x-a", b":path", "x-text"]),
                st.one_of(values, st.text(max_size=4)),
                st.sampled_from(["tuple", "never", "indexable", "sensitive"]),
            ),
            max_size=6,
        ),
        st.booleans(),
    )
    def test_same_block_as_hpack(
        self, spec: list[tuple[bytes | str, bytes | str, str]], resize: bool
    ) -> None:
        """
        What hpack's own encoder sends with the never-indexed names marked
        (the same bytes but for the Huffman coding of those values), and
        what its decoder reads back, in every tuple form hpack takes.
        """
        block: list[Any] = []
        marked: list[Any] = []
        for name, value, form in spec:
            secret = (name.encode() if isinstance(name, str) else name) in NEVER_INDEXED
            if form == "never":
                block.append(NeverIndexedHeaderTuple(name, value))
            elif form == "indexable":
                block.append(HeaderTuple(name, value))
            elif form == "sensitive":
                block.append((name, value, True))
            else:
                block.append((name, value))
            hidden = secret or form in ("never", "sensitive")
            marked.append(NeverIndexedHeaderTuple(name, value) if hidden else (name, value))
        ours, theirs = TunnelEncoder(), Encoder()
        if resize:
            ours.header_table_size = theirs.header_table_size = 256
        data = ours.encode(block)
        decoded = Decoder().decode(data, raw=True)
        expected = Decoder().decode(theirs.encode(marked), raw=True)
        self.assertEqual(decoded, expected)
        self.assertEqual(
            [isinstance(h, NeverIndexedHeaderTuple) for h in decoded],
            [isinstance(h, NeverIndexedHeaderTuple) for h in expected],
        )
        self.assertEqual(ours.header_table.dynamic_entries, theirs.header_table.dynamic_entries)

    @given(
        st.lists(
            st.lists(
                st.tuples(
                    st.sampled_from([b"x-a", b"accept", b":path", b"cookie", b"x-b"]),
                    st.sampled_from([b"", b"1", b"*/*", b"/", b"/x"]),
                ),
                max_size=6,
            ),
            min_size=1,
            max_size=4,
        ),
        st.booleans(),
    )
    def test_blocks_in_a_row_as_hpack(
        self, blocks: list[list[tuple[bytes, bytes]]], resize: bool
    ) -> None:
        """
        Block after block on one connection, from a few names and values
        (so fields are found in the table whole, by name, or not at all):
        the same bytes as hpack's encoder with the never-indexed names
        marked, but for the never-indexed values, which go without Huffman
        coding; the same table after each block.
        """
        ours, theirs = TunnelEncoder(), Encoder()
        mine, reference = Decoder(), Decoder()
        if resize:
            ours.header_table_size = theirs.header_table_size = 128
        for block in blocks:
            marked = [
                NeverIndexedHeaderTuple(n, v) if n in NEVER_INDEXED else (n, v) for n, v in block
            ]
            data, expected = ours.encode(block), theirs.encode(marked)
            if not any(n in NEVER_INDEXED for n, _ in block):
                self.assertEqual(data, expected)
            self.assertEqual(mine.decode(data, raw=True), reference.decode(expected, raw=True))
            self.assertEqual(ours.header_table.dynamic_entries, theirs.header_table.dynamic_entries)

    def test_size_set_twice_reaches_the_decoder(self) -> None:
        """
        The table resized to a size, then told the same size again (a peer
        that repeats its SETTINGS) before the next block: the block still
        starts with the size update, and the peer's decoder, whose table
        still has the old size, reads the fields the encoder indexed in the
        new one. (hpack's own encoder dropped the update: its decoder then
        refused the block as naming an entry it did not have.)
        """
        ours, decoder = TunnelEncoder(), Decoder()
        ours.header_table_size = 0
        decoder.decode(ours.encode([]), raw=True)
        ours.header_table_size = 64
        ours.header_table_size = 64
        block = [(b"x-a", b"1"), (b"x-a", b"1")]
        self.assertEqual(decoder.decode(ours.encode(block), raw=True), block)
        self.assertEqual(decoder.header_table.maxsize, 64)
