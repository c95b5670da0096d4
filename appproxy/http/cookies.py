"""
Cookies as the service reads and writes them: the C{Cookie} request header
parsed by name, and C{Set-Cookie} values that set or clear one of the
service's own cookies (host-only, C{Path=/}, C{Secure}, C{SameSite=Lax}).

Pure functions: no reactor, no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

__all__ = ["COOKIES_KEPT", "clear_cookie", "parse_cookies", "set_cookie"]


def parse_cookies(values: Sequence[bytes] | None) -> Mapping[str, str]:
    """
    The cookies of C{Cookie} headers, by name (the first of a name wins, as
    browsers send the most specific first).  Malformed pairs are ignored.

    A browser sends the same C{Cookie} value with every request of a page:
    a single value's cookies are read once and kept (L{COOKIES_KEPT} values,
    the least recently seen forgotten first), read-only.
    """
    if values and len(values) == 1:
        return _one_value(values[0])
    return _parse(values or ())


#: C{Cookie} values whose cookies are kept (L{parse_cookies}).
COOKIES_KEPT = 256


@functools.lru_cache(maxsize=COOKIES_KEPT)
def _one_value(value: bytes) -> Mapping[str, str]:
    return MappingProxyType(_parse((value,)))


def _parse(values: Iterable[bytes]) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for value in values:
        for pair in value.decode("latin-1").split(";"):
            name, eq, content = pair.strip().partition("=")
            if eq and name and name not in cookies:
                cookies[name] = content.strip()
    return cookies


def set_cookie(
    name: str, value: str, *, http_only: bool = True, max_age: int | None = None
) -> tuple[bytes, bytes]:
    """
    The C{Set-Cookie} header that sets cookie C{name} to C{value}: for the
    whole host, over HTTPS only, sent on top-level navigation from other
    sites; a session cookie unless C{max_age} (seconds) is given.
    """
    parts = [f"{name}={value}", "Path=/", "Secure"]
    if http_only:
        parts.append("HttpOnly")
    parts.append("SameSite=Lax")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return (b"set-cookie", "; ".join(parts).encode("ascii"))


def clear_cookie(name: str) -> tuple[bytes, bytes]:
    """The C{Set-Cookie} header that removes cookie C{name} from the browser."""
    return set_cookie(name, "", max_age=0)
