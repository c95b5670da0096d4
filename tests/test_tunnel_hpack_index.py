"""
The tunnel's indexed HPACK encoder (L{appproxy.tunnel.hpack_index}) against
the encoder it stands for: block after block, with the table resized, filled
past its size and emptied by an entry larger than itself, it must send the
same bytes as L{TunnelEncoder} (hpack's search) and keep the same table;
hpack's decoder must read back what was given.
"""

from __future__ import annotations

from hpack import Decoder
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connection import TunnelConnection
from appproxy.tunnel.fields import TunnelEncoder
from appproxy.tunnel.hpack_index import IndexedEncoder

# Names in the static table (with and without their static values), never
# indexed, and others; values that repeat, so fields are found whole, by
# name, or not at all.
names = st.sampled_from(
    [b":method", b":path", b"accept", b"accept-encoding", b"cookie", b"x-a", b"x-b", b"x-c"]
)
values = st.one_of(
    st.sampled_from([b"", b"GET", b"/", b"gzip, deflate", b"1", b"2", b"*/*"]),
    st.binary(max_size=3),
    # Now and then a value larger than a small table.
    st.integers(50, 300).map(lambda n: b"v" * n),
)
blocks = st.lists(st.tuples(names, values), max_size=8)
steps = st.one_of(
    blocks.map(lambda block: ("block", block)),
    st.sampled_from([0, 40, 64, 100, 200, 4096]).map(lambda size: ("size", size)),
)


class IndexedEncoderTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(st.lists(steps, min_size=1, max_size=40))
    def test_same_bytes_as_hpack_search(
        self, script: list[tuple[str, int | list[tuple[bytes, bytes]]]]
    ) -> None:
        """The same bytes and the same table as hpack's search, step by step."""
        ours, theirs = IndexedEncoder(), TunnelEncoder()
        decoder = Decoder()
        decoder.max_allowed_table_size = 1 << 16
        for _, arg in script:
            if isinstance(arg, int):
                ours.header_table_size = theirs.header_table_size = arg
                continue
            block = list(arg)
            data = ours.encode(block)
            self.assertEqual(data, theirs.encode(block))
            self.assertEqual(ours.header_table.dynamic_entries, theirs.header_table.dynamic_entries)
            self.assertEqual(decoder.decode(data, raw=True), block)

    def test_many_fields_through_a_small_table(self) -> None:
        """
        Thousands of distinct fields through a table of a few entries: the
        same bytes throughout, and the encoder's indexes stay a few times
        the table's size (entries evicted long ago forgotten).
        """
        ours, theirs = IndexedEncoder(), TunnelEncoder()
        ours.header_table_size = theirs.header_table_size = 256
        for n in range(3000):
            block = [(b"x-id", b"%d" % n), (b"x-same", b"1"), (b"x-%d" % (n % 7), b"%d" % (n % 5))]
            self.assertEqual(ours.encode(block), theirs.encode(block))
        entries = len(ours.header_table.dynamic_entries)
        self.assertLessEqual(len(ours._fields), 4 * entries + 64)
        self.assertLessEqual(len(ours._names), 4 * entries + 64)

    def test_tunnel_connection_uses_it(self) -> None:
        """The tunnel's connections encode with it."""
        self.assertIsInstance(TunnelConnection(True).encoder, IndexedEncoder)
