"""How conditional access names things in its sentences: quoted names, locations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["locations_phrase", "quoted"]


def quoted(names: Iterable[str]) -> str:
    """C{'a', 'b'}."""
    return ", ".join(f"'{name}'" for name in names)


def locations_phrase(names: Sequence[str]) -> str:
    """C{location 'a'} or C{locations 'a', 'b'}."""
    return ("location " if len(names) == 1 else "locations ") + quoted(names)
