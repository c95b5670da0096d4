"""
The length of a response body, as the internal application declared it.

The connector passes the backend's C{Content-Length} on through the tunnel,
so that the user's client gets the length (HTTP/1.1 without chunked
encoding, download progress in browsers) whenever the backend gave one.
The tunnel's HTTP/2 checks a declared length against the body exactly: only
one well-formed length, and only where a body follows it, may be sent.

Pure functions: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NO_BODY_STATUSES", "parse_content_length", "response_content_length"]

#: Statuses whose responses never have a body (RFC 9110 sections 15.3.5,
#: 15.4.5): a C{Content-Length} there describes another response, so it is
#: not passed on.
NO_BODY_STATUSES = frozenset({204, 304})

_OWS = b" \t"


def parse_content_length(values: Iterable[bytes]) -> int | None:
    """
    The one length that C{Content-Length} field values state (RFC 9110
    section 8.6): each value is C{1*DIGIT}, with optional whitespace around
    it; the list form (C{42, 42}) and repeated fields are accepted when
    every element states the same number.

    @return: the length, or None when there is no value at all.
    @raise ValueError: if an element is not a decimal number (empty, signed,
        other characters) or the elements state different numbers.
    """
    lengths: set[int] = set()
    for value in values:
        for element in value.split(b","):
            digits = element.strip(_OWS)
            if not digits.isdigit():
                raise ValueError(f"malformed Content-Length {value!r}")
            lengths.add(int(digits))
    if len(lengths) > 1:
        raise ValueError(f"conflicting Content-Length values {sorted(lengths)}")
    return lengths.pop() if lengths else None


def response_content_length(
    status: int, method: bytes, declared: Iterable[bytes], framed: int | None
) -> int | None:
    """
    The C{Content-Length} to send with a backend's response, or None for none.

    @param status: the response's status.
    @param method: the request's method.
    @param declared: the response's C{Content-Length} values as the HTTP
        client left them among the response headers: an HTTP/1.1 client
        frames the body by them, except in a response to C{HEAD}, where they
        are the length a C{GET} would have had.
    @param framed: the body length the HTTP client framed the body by
        (already checked), or None when it is not known in advance (chunked,
        or up to the end of the connection).
    @raise ValueError: a response to C{HEAD} declares a malformed or
        conflicting length.
    """
    if status < 200 or status in NO_BODY_STATUSES:
        return None
    if method == b"HEAD":
        return parse_content_length(declared)
    return framed
