"""
Header fields a request may carry only once (RFC 9110 section 5.3, RFC 9112
section 3.2), checked before anything is forwarded.

Two C{Host} lines or two C{Content-Type} lines are read differently by
different servers (the first, the last, or both joined): a proxy that passes
them on lets a client show its policy one value and the internal app the
other.  RFC 9112 requires a 400 for a request without C{Host} and for one with
more than one.

Pure functions: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["SINGLE_FIELDS", "single_field_problem"]

#: Fields that must not repeat, with how the problem is worded.
SINGLE_FIELDS: tuple[tuple[bytes, str], ...] = (
    (b"host", "Host"),
    (b"content-type", "Content-Type"),
)


def single_field_problem(
    fields: Iterable[tuple[bytes, Sequence[bytes]]], *, http2: bool = False
) -> str | None:
    """
    What is wrong with the request's C{Host} and C{Content-Type} fields, or
    L{None}.

    @param fields: (name, values) pairs, names in any case, as
        C{Headers.getAllRawHeaders} gives them.
    @param http2: whether the request came over HTTP/2, where C{:authority}
        and a C{Host} field with the same value are one host (RFC 9113
        section 8.3.1), not two.
    """
    values: dict[bytes, list[bytes]] = {}
    for name, field_values in fields:
        values.setdefault(name.lower(), []).extend(field_values)
    hosts = values.get(b"host", [])
    if not hosts:
        return "The request has no Host header."
    for name, label in SINGLE_FIELDS:
        found = values.get(name, [])
        if len(found) > 1 and not (http2 and name == b"host" and len(set(found)) == 1):
            return f"The request has more than one {label} header."
    return None
