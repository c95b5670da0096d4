"""
The admin API's query parameters, checked: the time range (RFC 3339 or
POSIX seconds), the user, app, result (sign-ins) or event, connector (audit),
the page size and the cursor; and the SQL C{WHERE} clause they make.  Pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

import attrs

from appproxy.admin.cursor import CursorError, decode_cursor

__all__ = [
    "DEFAULT_LIMIT",
    "EXPORT_FORMATS",
    "MAX_LIMIT",
    "Query",
    "QueryError",
    "parse_query",
    "parse_time",
    "where_clause",
]

#: Events in a page when C{limit} is not given, and at most.
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
#: The export's formats.
EXPORT_FORMATS: Final = ("jsonl", "syslog")

# The filters of each list: parameter -> column.
_COLUMNS: Final[Mapping[str, Mapping[str, str]]] = {
    "sign-ins": {"user": "user", "app": "app", "result": "result"},
    "audit": {"event": "event", "connector": "connector_id", "actor": "actor"},
}
_COMMON: Final = ("since", "until", "limit", "cursor")
_EXPORT: Final = ("since", "until", "format")
_EPOCH = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?\Z")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)
_MAX_VALUE: Final = 256


class QueryError(ValueError):
    """A parameter the API does not take, or a bad value; the text says which."""


@attrs.frozen(kw_only=True)
class Query:
    """
    What to list: C{since <= time < until}, the columns equal to C{equal},
    the rows after the id C{after}, at most C{limit}.
    """

    kind: str
    since: float | None = None
    until: float | None = None
    equal: tuple[tuple[str, str], ...] = ()
    after: int = 0
    limit: int = DEFAULT_LIMIT
    format: str = "jsonl"


def parse_time(text: str) -> float:
    """
    POSIX seconds from RFC 3339 (C{2026-12-07T10:00:00Z}, an offset, or a
    fraction) or from POSIX seconds themselves.

    @raise QueryError: if it is neither.
    """
    if _EPOCH.match(text):
        return float(text)
    if _RFC3339.match(text):
        try:
            moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            pass
        else:
            return moment.timestamp()
    raise QueryError(f"{text[:40]!r} is not a time: use RFC 3339 (2026-12-07T10:00:00Z) or epoch")


def _one(args: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise QueryError(f"{name} is given more than once")
    value = values[0]
    if len(value) > _MAX_VALUE or not value.isprintable():
        raise QueryError(f"{name} is too long or not printable")
    return value


def parse_query(kind: str, args: Mapping[str, Sequence[str]], *, export: bool = False) -> Query:
    """
    The query of C{args} (the URL's parameters) for the list C{kind}
    (C{sign-ins} or C{audit}); C{export}: the export's parameters.

    @raise QueryError: an unknown parameter or a bad value.
    """
    known = (*(_EXPORT if export else _COMMON), *_COLUMNS[kind])
    for name in args:
        if name not in known:
            raise QueryError(f"unknown parameter {name[:40]!r}; this takes: {', '.join(known)}")
    since, until = _one(args, "since"), _one(args, "until")
    equal = tuple(
        (column, value)
        for name, column in _COLUMNS[kind].items()
        if (value := _one(args, name)) is not None
    )
    query = Query(
        kind=kind,
        since=None if since is None else parse_time(since),
        until=None if until is None else parse_time(until),
        equal=equal,
    )
    if export:
        fmt = _one(args, "format") or "jsonl"
        if fmt not in EXPORT_FORMATS:
            raise QueryError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
        return attrs.evolve(query, format=fmt)
    limit_text = _one(args, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise QueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    cursor_text = _one(args, "cursor")
    after = 0
    if cursor_text is not None:
        try:
            after = decode_cursor(cursor_text, kind).after
        except CursorError as e:
            raise QueryError(str(e)) from None
    return attrs.evolve(query, limit=limit, after=after)


def where_clause(query: Query) -> tuple[str, list[object]]:
    """The SQL condition (on C{id}, C{time} and the filtered columns) and its parameters."""
    conditions: list[str] = ["id > ?"]
    params: list[object] = [query.after]
    if query.since is not None and math.isfinite(query.since):
        conditions.append("time >= ?")
        params.append(query.since)
    if query.until is not None and math.isfinite(query.until):
        conditions.append("time < ?")
        params.append(query.until)
    for column, value in query.equal:
        conditions.append(f"{column} = ?")
        params.append(value)
    return " AND ".join(conditions), params
