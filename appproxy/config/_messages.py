"""
How values are shown in a L{appproxy.config.model.ConfigError}: quoted, cut if
very long, on one line, keys written as in TOML.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_SHOWN = 200

#: The TOML names of the types a parsed document holds, most specific first.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (datetime.datetime, "datetime"),
    (datetime.date, "date"),
    (datetime.time, "time"),
)


def type_name(value: object) -> str:
    """The TOML name of a value's type."""
    for kind, kind_name in _TYPE_NAMES:
        if isinstance(value, kind):
            return kind_name
    return type(value).__name__


def quote(value: str) -> str:
    """A value shown in a message: quoted, escaped, and cut if very long."""
    if len(value) > _MAX_SHOWN:
        return repr(value[:_MAX_SHOWN]) + "..."
    return repr(value)


def number(value: float) -> str:
    """A number shown in a message (Python refuses to print huge integers)."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return "a very large number"
    return repr(value)


def one_of(choices: Iterable[str]) -> str:
    """C{'a', 'b' or 'c'}."""
    quoted = [f"'{choice}'" for choice in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def toml_key(name: str) -> str:
    """A key as written in TOML: bare if possible, else a quoted basic string."""
    if _BARE_KEY.fullmatch(name):
        return name
    out = ['"']
    for char in name:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(f"\\U{ord(char):08X}")
    out.append('"')
    return "".join(out)


def one_line(text: str) -> str:
    """C{text} with its control characters escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def strerror(error: OSError) -> str:
    """What went wrong with a file, without the errno."""
    return error.strerror or str(error)
