"""
How the provider's messages are read and written: strict JSON objects,
base64url, https URLs, query strings; and the constant-time comparison of the
values a sign-in sends out and expects back.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def json_object(document: bytes | str) -> dict[str, Any] | None:
    """
    Parse a strict JSON object (no NaN or Infinity, no duplicate members);
    L{None} if C{document} is anything else.
    """
    try:
        value = json.loads(
            document, parse_constant=_refuse_constant, object_pairs_hook=_unique_object
        )
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def b64url(data: bytes) -> str:
    """C{data} in unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """
    Decode unpadded base64url.

    @raise ValueError: if C{segment} is not base64url.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def is_https_url(value: object, *, query: bool = True) -> bool:
    """An absolute https URL with a host, without userinfo or fragment."""
    if not isinstance(value, str) or not value.isascii():
        return False
    if any(char <= " " or char == "\x7f" for char in value) or "#" in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    if not query and (parts.query or "?" in value):
        return False
    return parts.scheme == "https" and bool(parts.hostname) and "@" not in parts.netloc


def with_query(url: str, parameters: Sequence[tuple[str, str]]) -> str:
    """C{url} with C{parameters} appended to whatever query it already has."""
    parts = urlsplit(url)
    existing = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([*existing, *parameters], quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two strings in constant time."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )
