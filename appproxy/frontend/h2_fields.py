"""
The HPACK encoder of the responses to HTTP/2 clients.

It is the tunnel's (L{appproxy.tunnel.fields.TunnelEncoder}), except that
the response fields whose values are one response's own are sent as
literals without indexing (RFC 7541 section 6.2.2) instead of entering the
connection's dynamic table: a C{content-length}, C{date}, C{etag} or
C{last-modified} value is seldom sent again on the same connection, and each
entry would stay in the table (about 150 bytes of an idle connection's
memory) and push out fields that do repeat (C{content-type}, C{server},
C{cache-control}).  Their names are all in HPACK's static table, so such a
field's representation depends on nothing but its name and value: the short
ones are kept, process-wide (L{_LITERALS}, bounded), and a value seen before
(a C{content-length} of the same size, the C{date} of the same second) costs
a dict lookup, not a Huffman coding.
"""

from __future__ import annotations

from hpack.hpack import INDEX_NONE
from hpack.table import HeaderTable

from appproxy.tunnel.fields import TunnelEncoder

__all__ = ["ONE_RESPONSE_FIELDS", "ClientEncoder"]

#: Response fields whose values seldom repeat on a connection.
ONE_RESPONSE_FIELDS: frozenset[bytes] = frozenset(
    {
        b"age",
        b"content-length",
        b"content-range",
        b"date",
        b"etag",
        b"expires",
        b"last-modified",
        b"location",
    }
)


#: Each of those names' index in HPACK's static table (RFC 7541 appendix A).
_STATIC_INDEX: dict[bytes, int] = {}
for _index, (_name, _) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    if _name in ONE_RESPONSE_FIELDS:
        _STATIC_INDEX.setdefault(_name, _index)

#: Representations made, by (name, value, Huffman or not): values this short
#: at most, this many at most (then it starts afresh).
_LITERALS: dict[tuple[bytes, bytes, bool], bytes] = {}
_LITERAL_VALUE_MAX = 64
_LITERALS_KEPT = 1024


class ClientEncoder(TunnelEncoder):
    """
    L{TunnelEncoder}, without indexing the L{ONE_RESPONSE_FIELDS}, and with
    hpack's own table: the fields that change from response to response
    never search it, the few others find it small, and the tunnel's indexed
    table (L{appproxy.tunnel.hpack_index}) would cost each of the many idle
    client connections its two dictionaries.
    """

    table_class = HeaderTable

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        index = _STATIC_INDEX.get(name)
        if sensitive or index is None:
            return super().add(to_add, sensitive, huffman)
        key = (name, value, huffman)
        encoded = _LITERALS.get(key)
        if encoded is None:
            encoded = self._encode_indexed_literal(index, value, INDEX_NONE, huffman)
            if len(value) <= _LITERAL_VALUE_MAX:
                if len(_LITERALS) >= _LITERALS_KEPT:
                    _LITERALS.clear()
                _LITERALS[key] = encoded
        return encoded
