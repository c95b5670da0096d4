"""
L{appproxy.tunnel.hpack_index.IndexedTable} against hpack's own table: after
the same additions and size changes, each search gives the same answer, the
tables hold the same entries, and encoders on each write the same blocks.
"""

from __future__ import annotations

from typing import Any

from hpack import Decoder, Encoder
from hpack.table import HeaderTable
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.h2_compact import compact_table
from appproxy.tunnel.fields import TunnelEncoder
from appproxy.tunnel.hpack_index import IndexedTable

# Names of the static table and not, values of it and not, a few of each so
# that entries repeat, shadow one another and are evicted.
_names = st.sampled_from([b":status", b"content-type", b"date", b"x-id", b"x-other", b"set-cookie"])
_values = st.sampled_from([b"", b"200", b"text/html", b"a", b"b" * 30, b"c" * 200, b"d" * 5000])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _names, _values),
        st.tuples(st.just("maxsize"), st.sampled_from([0, 40, 100, 300, 4096, 10000])),
        st.tuples(st.just("search"), _names, _values),
    ),
    max_size=60,
)


class SameAsHpackTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(ops=_ops, compact=st.booleans())
    def test_same_searches_and_entries(self, ops: list[tuple[Any, ...]], compact: bool) -> None:
        """Every search answers as hpack's scan does, the entries are the same."""
        stock, indexed = HeaderTable(), IndexedTable()
        if compact:
            compact_table(indexed)  # as the public listener keeps its tables
        for op in ops:
            if op[0] == "add":
                stock.add(op[1], op[2])
                indexed.add(op[1], op[2])
            elif op[0] == "maxsize":
                stock.maxsize = indexed.maxsize = op[1]
            for name in (b":status", b"date", b"x-id", b"x-other"):
                for value in (b"", b"200", b"a", b"b" * 30, b"zz"):
                    self.assertEqual(stock.search(name, value), indexed.search(name, value))
            self.assertEqual(list(stock.dynamic_entries), list(indexed.dynamic_entries))
            self.assertEqual(stock._current_size, indexed._current_size)

    @settings(max_examples=200, deadline=None)
    @given(
        blocks=st.lists(
            st.lists(st.tuples(_names.filter(lambda n: n != b":status"), _values), max_size=8),
            max_size=12,
        )
    )
    def test_same_blocks(self, blocks: list[list[tuple[bytes, bytes]]]) -> None:
        """The tunnel's encoder writes what it wrote on hpack's table, and they decode back."""
        indexed = TunnelEncoder()
        self.assertIsInstance(indexed.header_table, IndexedTable)
        stock = TunnelEncoder()
        stock.header_table = HeaderTable()
        decoder = Decoder()
        decoder.max_header_list_size = 1 << 20
        for block in blocks:
            wire = indexed.encode(block)
            self.assertEqual(stock.encode(block), wire)
            self.assertEqual(decoder.decode(wire, raw=True), block)

    def test_plain_hpack_encoder_alike(self) -> None:
        """A value that changes each block is found by name in the table, as by hpack."""
        indexed, stock = TunnelEncoder(), Encoder()
        for n in range(200):
            fields = [(b"date", b"%d" % (n // 3)), (b"x-id", b"%d" % n), (b"etag", b"e")]
            self.assertEqual(indexed.encode(fields), stock.encode(fields))
