"""
The HPACK encoder of the responses to HTTP/2 clients.

It is the tunnel's (L{appproxy.tunnel.fields.TunnelEncoder}), except that
the response fields whose values are one response's own are sent as
literals without indexing (RFC 7541 section 6.2.2) instead of entering the
connection's dynamic table: a C{content-length}, C{date}, C{etag} or
C{last-modified} value is seldom sent again on the same connection, and each
entry would stay in the table (about 150 bytes of an idle connection's
memory) and push out fields that do repeat (C{content-type}, C{server},
C{cache-control}).  Field names are still taken from the tables.
"""

from __future__ import annotations

from hpack.hpack import INDEX_NONE

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


class ClientEncoder(TunnelEncoder):
    """L{TunnelEncoder}, without indexing the L{ONE_RESPONSE_FIELDS}."""

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        if sensitive or name not in ONE_RESPONSE_FIELDS:
            return super().add(to_add, sensitive, huffman)
        match = self.header_table.search(name, value)
        if match is None:
            return self._encode_literal(name, value, INDEX_NONE, huffman)
        index, _, perfect = match
        if perfect is not None:
            return self._encode_indexed(index)
        return self._encode_indexed_literal(index, value, INDEX_NONE, huffman)
