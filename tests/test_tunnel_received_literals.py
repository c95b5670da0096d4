"""
L{appproxy.tunnel.received.TunnelDecoder} beside hpack's decoder on literal
fields not indexed and never indexed (RFC 7541 sections 6.2.2 and 6.2.3),
which hpack's encoder does not write: built here representation by
representation, with indexed and literal names, plain and Huffman-coded
values, short and long, and cut anywhere.
"""

from __future__ import annotations

from typing import Any

from hpack import Decoder
from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.received import TunnelDecoder

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _string(value: bytes, huffman: bool) -> bytes:
    if huffman:
        value = _huffman.encode(value)
    length = encode_integer(len(value), 7)
    if huffman:
        length[0] |= 0x80
    return bytes(length) + value


def _literal(never: bool, name: int | bytes, value: bytes, huffman: bool) -> bytes:
    """A literal field: the name by index (may need more than 4 bits) or literal."""
    if isinstance(name, int):
        prefix = encode_integer(name, 4)
        prefix[0] |= 0x10 if never else 0
        return bytes(prefix) + _string(value, huffman)
    return bytes([0x10 if never else 0]) + _string(name, False) + _string(value, huffman)


_field = st.one_of(
    st.builds(
        _literal,
        st.booleans(),
        st.one_of(st.integers(0, 70), st.sampled_from([b"x-a", b"cookie"])),
        st.binary(max_size=140),
        st.booleans(),
    ),
    st.sampled_from([b"\x82", b"\x84", b"\xbe", b"\x40\x03x-b\x01c"]),  # indexed, one added
)


def _decoded(decoder: Decoder, block: bytes) -> Any:
    try:
        return [(type(h), h[0], h[1], h.indexable) for h in decoder.decode(block, raw=True)]
    except Exception as e:
        return type(e)


class LiteralTests(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None)
    @given(st.lists(_field, max_size=6), st.integers(0, 400))
    def test_as_hpack_decodes(self, fields: list[bytes], cut: int) -> None:
        block = b"".join(fields)
        for data in (block, block[:cut]):
            ours, theirs = TunnelDecoder(), Decoder()
            self.assertEqual(_decoded(ours, data), _decoded(theirs, data), data)
            self.assertEqual(
                list(ours.header_table.dynamic_entries), list(theirs.header_table.dynamic_entries)
            )
