"""
The opaque keyset cursor of the admin API: which list it pages and the last
row id its page ended with.  Events are listed by row id ascending, so the
next page is "id greater than this", which returns every event exactly once
however many are written meanwhile.

The text is C{v1.} and the URL-safe base64 (no padding) of a small JSON
object; clients must treat it as opaque.  Pure.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Final

import attrs

__all__ = ["KINDS", "Cursor", "CursorError", "decode_cursor", "encode_cursor"]

#: The lists a cursor pages.
KINDS: Final = frozenset({"sign-ins", "audit"})
_PREFIX: Final = "v1."
#: The longest cursor text accepted.
_MAX: Final = 200


class CursorError(ValueError):
    """A cursor that is not one this API gave, or is for another list."""


@attrs.frozen
class Cursor:
    """Page C{kind} after the row id C{after}."""

    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    after: int = attrs.field(validator=attrs.validators.ge(0))


def encode_cursor(cursor: Cursor) -> str:
    """The cursor's opaque text."""
    text = json.dumps({"k": cursor.kind, "a": cursor.after}, separators=(",", ":"))
    return _PREFIX + base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")


def decode_cursor(text: str, kind: str) -> Cursor:
    """
    The cursor C{text} names, which must page C{kind}.

    @raise CursorError: if it is malformed or pages another list.
    """
    if len(text) > _MAX or not text.startswith(_PREFIX) or not text.isascii():
        raise CursorError("the cursor is not one this API gave")
    body = text[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        raise CursorError("the cursor is not one this API gave") from None
    if not isinstance(value, dict) or set(value) != {"k", "a"}:
        raise CursorError("the cursor is not one this API gave")
    after = value["a"]
    if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 1 << 63:
        raise CursorError("the cursor is not one this API gave")
    if value["k"] != kind:
        raise CursorError(f"the cursor is not for {kind}")
    return Cursor(kind, after)
