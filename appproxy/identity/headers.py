"""
Header-based single sign-on: what the internal app learns about the user.

  - L{identity_headers}: the configured identity headers (C{X-Remote-User:
    alice}) from the session's claims; a value that could smuggle a header
    is refused (L{UnsafeClaimValue}), never forwarded;
  - L{strip_spoofed_headers}: the client's own copies of those headers, and
    every C{X-AppProxy-*} header, are removed before the request goes on;
  - L{strip_appproxy_cookies} and L{drop_appproxy_set_cookies}: appproxy's
    cookies never reach the app, and the app cannot set them.

The signed identity assertion is L{appproxy.identity.assertion}.  Header lists
are ordered C{list[tuple[bytes, bytes]]} of (name, value), as in
L{appproxy.http.headers}; inputs are never mutated.  Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from appproxy.access.session import Session
from appproxy.http.headers import RESERVED_PREFIX

__all__ = [
    "APPPROXY_COOKIE_PREFIXES",
    "UnsafeClaimValue",
    "drop_appproxy_set_cookies",
    "identity_headers",
    "normalise_header_name",
    "strip_appproxy_cookies",
    "strip_spoofed_headers",
]

Headers = list[tuple[bytes, bytes]]

#: Cookies whose names start with one of these are appproxy's (compared
#: case-sensitively, as cookie names are).
APPPROXY_COOKIE_PREFIXES: tuple[bytes, ...] = (b"__Host-appproxy-", b"appproxy-")

#: What every one of L{APPPROXY_COOKIE_PREFIXES} contains.
_COOKIE_MARK = b"appproxy-"
_OWS = b" \t"
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Control characters (C0, DEL, C1), line and paragraph separators, and lone
# surrogates (which cannot be encoded).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


class UnsafeClaimValue(Exception):
    """
    A claim's value cannot be sent as a header: it contains a control
    character (CR, LF, NUL, TAB, DEL, ...) or a line or paragraph separator.

    The value itself is not kept: it must not reach the logs either.

    @ivar header: the header the claim was to be sent in.
    @ivar claim: the claim's name.
    """

    def __init__(self, header: str, claim: str) -> None:
        super().__init__(header, claim)
        self.header = header
        self.claim = claim

    def __str__(self) -> str:
        return (
            f"claim {self.claim!r} cannot be sent in header {self.header!r}: "
            "its value contains a control character"
        )


#: Every character of those categories, as one class: Cc is C0, DEL and C1,
#: Zl and Zp are U+2028 and U+2029, Cs the surrogates (fixed by Unicode;
#: tests.test_identity checks the class against unicodedata).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _is_safe(value: str) -> bool:
    return _UNSAFE.search(value) is None


@functools.lru_cache(maxsize=256)
def _header_name(name: str) -> bytes:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"{name!r} is not a valid header name")
    return name.lower().encode("ascii")


def identity_headers(mapping: Sequence[tuple[str, str]], session: Session) -> Headers:
    """
    The identity headers for C{session}: for each (header name, claim name)
    of C{mapping}, in order, the header with the claim's value (see
    L{Session.claim}).

    Names are lowercased (they go into HTTP/2 frames).  A list claim's items
    are joined with C{","} (an empty list gives an empty value).  A claim the
    session does not have gives no header.  Values are UTF-8.

    @raise UnsafeClaimValue: if a value contains a control character, DEL,
        or a Unicode line or paragraph separator.
    @raise ValueError: if a header name is not an HTTP token.
    """
    key = (id(session), mapping)
    try:
        cached = _IDENTITY_CACHE.get(key)
    except TypeError:  # a mapping that is not hashable: not cached
        return _identity_headers(mapping, session)
    if cached is not None and cached[0] is session:
        return list(cached[1])
    result = _identity_headers(mapping, session)
    if len(_IDENTITY_CACHE) >= _IDENTITY_CACHE_SIZE:
        _IDENTITY_CACHE.clear()
    _IDENTITY_CACHE[key] = (session, tuple(result))
    return result


#: Identity headers made lately, by (the session object's id, the mapping):
#: the session cookie codec gives the same L{Session} object for the same
#: cookie (L{appproxy.access.cookie}), so a signed-in browser's requests make
#: their headers once.  The entry holds the session, so its id is not reused
#: while the entry exists; a session is immutable.  Emptied when full.
_IDENTITY_CACHE: dict[
    tuple[int, Sequence[tuple[str, str]]], tuple[Session, tuple[tuple[bytes, bytes], ...]]
] = {}
_IDENTITY_CACHE_SIZE = 1024


def _identity_headers(mapping: Sequence[tuple[str, str]], session: Session) -> Headers:
    result: Headers = []
    for header, claim in mapping:
        name = _header_name(header)
        value = session.claim(claim)
        if value is None:
            continue
        text = value if isinstance(value, str) else ",".join(value)
        if not _is_safe(text):
            raise UnsafeClaimValue(header, claim)
        result.append((name, text.encode("utf-8")))
    return result


def normalise_header_name(name: str) -> str:
    """A header name lowercased, with C{_} as C{-}: how back ends see it."""
    return name.lower().replace("_", "-")


@functools.lru_cache(maxsize=64)
def _normalised_names(protected: frozenset[str]) -> frozenset[bytes]:
    """C{protected}, normalised and encoded: computed once per set (the front
    end's set changes only on reload), not once per request."""
    return _encoded(frozenset(normalise_header_name(name) for name in protected))


def _encoded(names: frozenset[str]) -> frozenset[bytes]:
    """
    Header names as the fields' names are compared (latin-1 bytes); a name
    with a character beyond latin-1 matches no field, and is left out.
    """
    encoded = set()
    for name in names:
        try:
            encoded.add(name.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    return frozenset(encoded)


def strip_spoofed_headers(
    headers: Sequence[tuple[bytes, bytes]], protected: Iterable[str]
) -> Headers:
    """
    Remove the headers a client may not send: every header whose name,
    normalised (L{normalise_header_name}), is one of C{protected} or starts
    with C{x-appproxy-}.  CGI-style back ends see C{X_Remote_User} as
    C{X-Remote-User}, so both spellings are removed.

    @param protected: the identity headers' names (normalised here too).
    """
    names = (
        _normalised_names(protected)
        if isinstance(protected, frozenset)
        else _encoded(frozenset(normalise_header_name(name) for name in protected))
    )
    # normalise_name inline: one lowercase and one replace per field.
    return [
        (name, value)
        for name, value in headers
        if (normalised := name.lower().replace(b"_", b"-")) not in names
        and not normalised.startswith(RESERVED_PREFIX)
    ]


def _is_appproxy_cookie(pair: bytes) -> bool:
    """Is this C{name=value} (or malformed) cookie pair one of appproxy's?"""
    name, equals, _ = pair.partition(b"=")
    return bool(equals) and name.strip(_OWS).startswith(APPPROXY_COOKIE_PREFIXES)


def strip_appproxy_cookies(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """
    Remove appproxy's cookies (see L{APPPROXY_COOKIE_PREFIXES}) from every
    C{Cookie} header.

    A C{Cookie} header without appproxy cookies is kept unchanged.  From one
    with them, the other pairs are kept in order (joined with C{"; "});
    malformed pairs (without C{=}) are kept as they were.  A header left
    empty is dropped.
    """
    result: Headers = []
    for name, value in headers:
        if name.lower() != b"cookie" or _COOKIE_MARK not in value:
            # (No pair can be appproxy's without the mark in its name.)
            result.append((name, value))
            continue
        kept = _without_appproxy_cookies(value)
        if kept:
            result.append((name, kept))
    return result


@functools.lru_cache(maxsize=256)
def _without_appproxy_cookies(value: bytes) -> bytes:
    """
    A C{Cookie} value without appproxy's pairs (empty if none is left).  A
    browser sends the same value with every request of a page: the last
    values seen are kept.
    """
    pairs = value.split(b";")
    kept = [pair for pair in pairs if not _is_appproxy_cookie(pair)]
    if len(kept) == len(pairs):
        return value
    remaining = [pair.strip(_OWS) for pair in kept]
    return b"; ".join(pair for pair in remaining if pair)


def drop_appproxy_set_cookies(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """
    Drop every C{Set-Cookie} header (name compared case-insensitively) that
    would set one of appproxy's cookies: its cookie name (before the first
    C{=} of the first C{;}-separated part, without surrounding whitespace)
    starts with one of L{APPPROXY_COOKIE_PREFIXES}.
    """
    result: Headers = []
    for name, value in headers:
        if name.lower() == b"set-cookie":
            pair = value.split(b";", 1)[0]
            cookie_name = pair.split(b"=", 1)[0].strip(_OWS)
            if cookie_name.startswith(APPPROXY_COOKIE_PREFIXES):
                continue
        result.append((name, value))
    return result
