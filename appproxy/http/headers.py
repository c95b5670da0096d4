"""
Request headers sent to the internal application.

Pure functions: no reactor, no I/O.  Header lists are ordered
C{list[tuple[bytes, bytes]]} of (raw name, raw value); inputs are never
mutated.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "FORWARDING_HEADERS",
    "HOP_BY_HOP",
    "RESERVED_PREFIX",
    "is_valid_header_value",
    "new_request_id",
    "normalise_name",
    "prepare_request_headers",
    "strip_header_names",
]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"http2-settings",
    }
)

# Client-supplied forwarding information is never trusted.  Matched with '-'
# and '_' treated alike: CGI/WSGI-style back ends map both to the same
# variable (X_Forwarded_For and X-Forwarded-For both become
# HTTP_X_FORWARDED_FOR), so an underscore variant is as good as a spoof.
FORWARDING_HEADERS: frozenset[bytes] = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
    }
)

# Reserved for appproxy's own identity headers.
RESERVED_PREFIX = b"x-appproxy-"

_OWS = b" \t"


def normalise_name(name: bytes) -> bytes:
    """
    Lowercase a header name (ASCII only, as HTTP compares header names) and
    treat C{_} as C{-}, as CGI-style back ends do.
    """
    return name.lower().replace(b"_", b"-")


def is_valid_header_value(value: bytes) -> bool:
    """
    Is C{value} safe to send as a header value?

    False if it contains NUL, CR, LF, any other C0 control character except
    HTAB, or DEL.  Bytes >= 0x80 (obs-text) are allowed.
    """
    return _UNSAFE_VALUE_BYTE.search(value) is None


#: The bytes L{is_valid_header_value} refuses: C0 controls but HTAB, and DEL
#: (one C-level scan per value, not a Python step per byte).
_UNSAFE_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _encode_value(what: str, value: str) -> bytes:
    try:
        encoded = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not ASCII: {value!r}") from None
    if not encoded or _UNSAFE_VALUE_BYTE.search(encoded) is not None:
        raise ValueError(f"{what} is not a valid header value: {value!r}")
    return encoded


@functools.lru_cache(maxsize=256)
def _check_netloc(netloc: str) -> None:
    """L{_encode_value} of an app's netloc: checked once (it is configuration)."""
    _encode_value("internal_netloc", netloc)


def _connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip(_OWS).lower()
                if token:
                    tokens.add(token)
    return tokens


def prepare_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client_address: str,
    external_host: str,
    request_id: str,
    internal_netloc: str,
) -> list[tuple[bytes, bytes]]:
    """
    The headers to forward to the internal application.

    Names are lowercased (they go into HTTP/2 frames) and kept in their
    original order.  Removed: hop-by-hop headers and every header named in a
    C{Connection} header; C{host}; pseudo-headers; client-supplied forwarding
    headers (see L{FORWARDING_HEADERS}); every C{x-appproxy-*} header.
    Appended: C{x-forwarded-for}, C{x-forwarded-proto: https},
    C{x-forwarded-host} and C{x-request-id}.

    @param internal_netloc: the internal application's host[:port].  It is not
        emitted here (the caller sends it as C{:authority}); it is validated so
        that a bad value fails early, in one place.

    @raise ValueError: if C{client_address}, C{external_host}, C{request_id}
        or C{internal_netloc} is empty, not ASCII or contains control
        characters.
    """
    forwarded_for = _encode_value("client_address", client_address)
    forwarded_host = _encode_value("external_host", external_host)
    request_id_value = _encode_value("request_id", request_id)
    _check_netloc(internal_netloc)

    connection_named = _connection_tokens(headers)
    result: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        normalised = lower.replace(b"_", b"-")  # normalise_name, inline
        if (
            lower in HOP_BY_HOP
            or lower in connection_named
            or lower == b"host"
            or lower.startswith(b":")
            or normalised in FORWARDING_HEADERS
            or normalised.startswith(RESERVED_PREFIX)
        ):
            continue
        result.append((lower, value))
    result.extend(
        [
            (b"x-forwarded-for", forwarded_for),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", forwarded_host),
            (b"x-request-id", request_id_value),
        ]
    )
    return result


def strip_header_names(
    headers: Sequence[tuple[bytes, bytes]], names: Iterable[str]
) -> list[tuple[bytes, bytes]]:
    """
    Remove every header whose name matches one of C{names}, case-insensitively
    and with C{-} and C{_} treated alike.  Remaining headers keep their order
    and their original name spelling.
    """
    unwanted = {normalise_name(name.encode("utf-8")) for name in names}
    return [(name, value) for name, value in headers if normalise_name(name) not in unwanted]


#: Random bytes from the kernel, taken 4 KiB at a time: one system call for
#: 256 request IDs, not one each (1.5% of the service's CPU for HTTP/2).
_random = b""
_random_at = 0
_RANDOM_BATCH = 4096


def new_request_id() -> str:
    """A fresh request ID: 32 lowercase hexadecimal characters (128 random bits)."""
    global _random, _random_at
    at = _random_at
    if at + 16 > len(_random):
        _random, at = os.urandom(_RANDOM_BATCH), 0
    _random_at = at + 16
    return _random[at : at + 16].hex()


def _forget_random() -> None:
    """A forked process draws its own bytes: never the IDs its parent will use."""
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)
