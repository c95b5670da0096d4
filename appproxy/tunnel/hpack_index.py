"""
An HPACK encoder's dynamic table (RFC 7541 section 2.3.2) searched through a
dict, not a scan.

hpack's L{HeaderTable.search} walks the whole dynamic table for every field
the static table does not answer with a perfect match: for a field whose
value changes from block to block (a C{date}, a request id, a never-indexed
cookie) that is every entry of a table that a few responses fill to its 4,096
bytes, on every block.  L{IndexedTable} keeps, beside the entries, the newest
entry of each name and of each name and value, by the number of entries added
before it; C{search} then answers in two look-ups what hpack's scan would
(C{tests.test_tunnel_hpack_index} holds the two side by side).
"""

from __future__ import annotations

from typing import Any

from hpack.table import HeaderTable, table_entry_size

__all__ = ["IndexedTable"]

_STATIC = HeaderTable.STATIC_TABLE_MAPPING
#: The index of the first dynamic entry.
_OFFSET = HeaderTable.STATIC_TABLE_LENGTH + 1


class IndexedTable(HeaderTable):
    """hpack's L{HeaderTable}, searched by L{search} in constant time."""

    def __init__(self) -> None:
        super().__init__()
        #: Entries added so far: the newest entry is the C{_added}th.
        self._added = 0
        #: For a name, and for a (name, value), the number of the newest
        #: entry in the table that has it.
        self._newest: dict[Any, int] = {}

    def add(self, name: bytes, value: bytes) -> None:
        size = table_entry_size(name, value)
        if size > self._maxsize:
            self.dynamic_entries.clear()
            self._current_size = 0
            self._newest.clear()
            return
        self.dynamic_entries.appendleft((name, value))
        self._added = added = self._added + 1
        newest = self._newest
        newest[name] = newest[(name, value)] = added
        self._current_size += size
        self._shrink()

    def _shrink(self) -> None:
        cursize = self._current_size
        entries = self.dynamic_entries
        newest = self._newest
        while cursize > self._maxsize:
            name, value = entries.pop()
            cursize -= table_entry_size(name, value)
            number = self._added - len(entries)
            if newest.get(name) == number:
                del newest[name]
            if newest.get((name, value)) == number:
                del newest[(name, value)]
        self._current_size = cursize

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined]
    def maxsize(self, newmax: int) -> None:
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]
        if not self.dynamic_entries:
            self._newest.clear()

    def search(self, name: bytes, value: bytes) -> tuple[int, bytes, bytes | None] | None:
        # hpack's answer: a perfect match in the static table, else the
        # newest perfect match in the dynamic one, else a match of the name
        # in the static table, else the newest in the dynamic one.
        static = _STATIC.get(name)
        if static is not None:
            index = static[1].get(value)
            if index is not None:
                return index, name, value
        newest = self._newest
        number = newest.get((name, value))
        if number is not None:
            return _OFFSET + self._added - number, name, value
        if static is not None:
            return static[0], name, None
        number = newest.get(name)
        if number is not None:
            return _OFFSET + self._added - number, name, None
        return None
