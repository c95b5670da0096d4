"""
The tunnel's field decisions (L{appproxy.tunnel.fields}) against the real
judges: h2's own inbound validation, Twisted's HTTP client, hpack's decoder.
"""

from __future__ import annotations

import re

from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import _ensureValidMethod, _ensureValidURI

from appproxy.tunnel.fields import (
    CONTROL_FIELD,
    NEVER_INDEXED,
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
