"""
Smaller per-connection state for h2's and hpack's objects: what an idle
HTTP/2 client connection keeps.

h2's L{Settings} keeps each setting's values (the current one, then those
proposed and not yet acknowledged) in a C{collections.deque}, and hpack's
L{HeaderTable} its dynamic table's entries in one too.  A deque costs 760
bytes however little it holds (one 64-slot block): a connection has about
sixteen of them (seven settings at each end, the two HPACK tables), about
12 KiB of an idle connection's memory, for one or two values each.  A list
holding them costs 64 bytes or so.

L{compact_settings} and L{compact_table} put the values into lists with the
two deque methods h2 and hpack call on them (C{popleft}, C{appendleft}):
the same values, the same order, the same behaviour.  A list's
C{insert(0, ...)} and C{pop(0)} move the entries after it, a few hundred at
most (a 4,096-byte table holds at most 128 entries; a setting has two or
three values while a change is in flight).

L{BoundedDict} is h2's C{SizeLimitDict} (the closed streams a connection
remembers) on a plain dict, which keeps its insertion order: an
C{OrderedDict} costs twice as much per connection.
"""

from __future__ import annotations

from typing import Any, TypeVar

from h2.settings import SettingCodes, Settings
from hpack.table import HeaderTable

__all__ = ["BoundedDict", "ListDeque", "compact_settings", "compact_table"]

K = TypeVar("K")
V = TypeVar("V")


class ListDeque(list[Any]):
    """
    A list with the deque methods h2, hpack and twisted.web call on theirs
    (C{popleft}, C{appendleft}).
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, entry: Any) -> None:
        self.insert(0, entry)


class CompactSettings(Settings):
    """h2's L{Settings}, a setting first seen in a SETTINGS frame kept in a list too."""

    def __setitem__(self, key: SettingCodes | int, value: int) -> None:
        super().__setitem__(key, value)
        values = self._settings[key]
        if type(values) is not ListDeque:
            self._settings[key] = ListDeque(values)  # type: ignore[assignment]


def compact_settings(settings: Settings) -> None:
    """Keep C{settings}' values in lists from now on (in place)."""
    settings.__class__ = CompactSettings
    table = settings._settings
    for key, values in table.items():
        table[key] = ListDeque(values)  # type: ignore[assignment]


def compact_table(table: HeaderTable) -> None:
    """Keep C{table}'s dynamic entries in a list from now on (in place)."""
    table.dynamic_entries = ListDeque(table.dynamic_entries)  # type: ignore[assignment]


class BoundedDict(dict[K, V]):
    """
    A dict that forgets its oldest key once it holds more than C{size_limit}
    (h2's C{SizeLimitDict}, which an idle connection pays twice as much
    for).
    """

    __slots__ = ("_size_limit",)

    def __init__(self, size_limit: int) -> None:
        super().__init__()
        self._size_limit = size_limit

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        if len(self) > self._size_limit:
            del self[next(iter(self))]
