"""
The tunnel's HPACK encoder with its dynamic table indexed by field.

hpack's C{HeaderTable.search} walks the whole dynamic table for every field
it encodes: on a tunnel connection, whose table holds the fields every
user's requests have in common (some sixty entries in 4 KiB), that is a
Python loop of dozens of steps per field, a dozen fields per request.
L{IndexedEncoder} finds a field in two dictionary lookups instead, and sends
the very same bytes (a property test holds it to L{TunnelEncoder}).

How: every entry added to the table gets the next serial number.  hpack adds
at the front of the table and evicts from the back (or empties it whole), so
the entries in the table are always those with the C{len(table)} newest
serials, and the one with serial C{s} is at dynamic index
C{newest - s}.  Two dictionaries remember the newest serial of each field
and of each name; a serial older than the table's length is an evicted
entry.  Entries evicted long ago are dropped from the dictionaries now and
then, so they stay within a few times the table's length.

For the tunnel's few, long-lived connections only: the public listener's
HTTP/2 connections (many, mostly idle, with small tables) keep hpack's
search and spend no memory on the dictionaries.
"""

from __future__ import annotations

from hpack.hpack import INDEX_INCREMENTAL, INDEX_NEVER
from hpack.table import HeaderTable

from appproxy.tunnel.fields import TunnelEncoder

__all__ = ["IndexedEncoder"]

#: Field name -> (its first static index, {value: static index}).
_STATIC = HeaderTable.STATIC_TABLE_MAPPING
#: The index of the newest dynamic entry (RFC 7541 section 2.3.3).
_FIRST_DYNAMIC = HeaderTable.STATIC_TABLE_LENGTH + 1
#: The indexed representation (RFC 7541 section 6.1) of the indexes that fit
#: in its first byte.
_INDEXED = [bytes([0x80 | index]) for index in range(127)]


class IndexedEncoder(TunnelEncoder):
    """
    L{TunnelEncoder} (hpack's encoder, never-indexed secrets) whose table
    lookups are dictionary lookups.
    """

    def __init__(self) -> None:
        super().__init__()
        #: The serial of the newest entry added to the table.
        self._newest = 0
        #: (name, value) -> the serial of its newest entry.
        self._fields: dict[tuple[bytes, bytes], int] = {}
        #: name -> the serial of the newest entry with that name.
        self._names: dict[bytes, int] = {}

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        table = self.header_table
        live = len(table.dynamic_entries)
        newest = self._newest
        static = _STATIC.get(name)
        # hpack's order: the static table whole, the dynamic table whole,
        # the static table by name, the dynamic table by name.
        if static is not None:
            index = static[1].get(value)
            if index is not None:
                return _INDEXED[index]
        serial = self._fields.get(to_add)
        if serial is not None and newest - serial < live:
            index = _FIRST_DYNAMIC + newest - serial
            return _INDEXED[index] if index < 127 else self._encode_indexed(index)
        how = INDEX_NEVER if sensitive else INDEX_INCREMENTAL
        if static is not None:
            encoded = self._encode_indexed_literal(static[0], value, how, huffman)
        else:
            serial = self._names.get(name)
            if serial is not None and newest - serial < live:
                index = _FIRST_DYNAMIC + newest - serial
                encoded = self._encode_indexed_literal(index, value, how, huffman)
            else:
                encoded = self._encode_literal(name, value, how, huffman)
        if not sensitive:
            self._insert(table, name, value)
        return encoded

    def _insert(self, table: HeaderTable, name: bytes, value: bytes) -> None:
        """Add the field to the table, as hpack does, and to the indexes."""
        table.add(name, value)
        if 32 + len(name) + len(value) > table.maxsize:
            return  # (larger than the table: hpack emptied it instead)
        self._newest += 1
        self._fields[(name, value)] = self._newest
        self._names[name] = self._newest
        if len(self._fields) > 4 * len(table.dynamic_entries) + 64:
            self._forget_evicted(table)

    def _forget_evicted(self, table: HeaderTable) -> None:
        """Keep in the indexes only the entries still in the table."""
        fields: dict[tuple[bytes, bytes], int] = {}
        names: dict[bytes, int] = {}
        newest = self._newest
        for age, (name, value) in enumerate(table.dynamic_entries):
            fields.setdefault((name, value), newest - age)
            names.setdefault(name, newest - age)
        self._fields, self._names = fields, names
