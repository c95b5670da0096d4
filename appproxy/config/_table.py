"""
Checking a parsed TOML document, one table at a time: a L{Table} rejects
unknown keys up front, then hands out checked values by name, and every
mistake becomes a one-line L{ConfigError} naming the file, the key and the
problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NoReturn

import attrs

from appproxy.config._messages import number, one_of, quote, toml_key, type_name
from appproxy.config.model import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@attrs.frozen
class Context:
    """The configuration file being checked."""

    #: The file's absolute path; relative paths in it are relative to its directory.
    path: Path

    @property
    def base(self) -> Path:
        return self.path.parent

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(str(self.path), key, problem)


class _Missing:
    pass


#: What L{Table.get} returns for an absent key.
MISSING: Final = _Missing()


@attrs.frozen
class Table:
    """
    A TOML table being checked.

    @ivar where: the table's dotted path (C{apps[1]}), C{""} for the document.
    """

    ctx: Context
    where: str
    _data: Mapping[str, object] = attrs.field(repr=False)
    _known: tuple[str, ...] = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        for name in self._data:
            if name not in self._known:
                problem = "unknown key"
                import difflib  # only for a mistake: the daemon need not carry it

                close = difflib.get_close_matches(name, self._known, n=1)
                if close:
                    problem += f" (did you mean '{close[0]}'?)"
                self.fail(name, problem)

    def key(self, name: str) -> str:
        formatted = toml_key(name)
        return f"{self.where}.{formatted}" if self.where else formatted

    def fail(self, name: str, problem: str) -> NoReturn:
        self.ctx.fail(self.key(name), problem)

    def fail_item(self, name: str, index: int, problem: str) -> NoReturn:
        """Complain about item C{index} of the array C{name}."""
        self.ctx.fail(f"{self.key(name)}[{index}]", problem)

    def get(self, name: str) -> object:
        return self._data.get(name, MISSING)

    def has(self, name: str) -> bool:
        return name in self._data

    def required(self, name: str, hint: str = "") -> object:
        value = self.get(name)
        if value is MISSING:
            self.fail(name, f"is required ({hint})" if hint else "is required")
        return value

    def string(self, name: str, hint: str = "") -> str:
        return self._check_string(name, self.required(name, hint))

    def optional_string(self, name: str) -> str | None:
        value = self.get(name)
        return None if value is MISSING else self._check_string(name, value)

    def _check_string(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {type_name(value)}")
        if not value:
            self.fail(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is MISSING:
            return default
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, not {type_name(value)}")
        return value

    def number(self, name: str, default: float, maximum: float) -> float:
        """A number of seconds, more than 0 and at most C{maximum}."""
        value = self.get(name)
        if value is MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(name, f"must be a number, not {type_name(value)}")
        if not 0 < value <= maximum:
            self.fail(name, f"must be more than 0 and at most {maximum:g}, not {number(value)}")
        return float(value)

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.get(name)
        if value is MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer, not {type_name(value)}")
        if not minimum <= value <= maximum:
            self.fail(name, f"must be from {minimum} to {maximum}, not {number(value)}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name)
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {type_name(value)}")
        if value not in choices:
            self.fail(name, f"must be {one_of(choices)}, not {quote(value)}")
        return value

    def name(self, name: str) -> str:
        """A name of an app, connector group, location or policy."""
        value = self.string(name)
        if not _NAME.fullmatch(value):
            self.fail(
                name,
                f"{quote(value)} is not a valid name (1 to 64 letters, digits, '-' or '_')",
            )
        return value

    def path(self, name: str, hint: str = "") -> Path:
        return self.ctx.base / self.no_nul(name, self.string(name, hint))

    def no_nul(self, name: str, value: str) -> str:
        """C{value}, which is to become a path, unless it holds a NUL."""
        if "\0" in value:
            self.fail(name, "must not contain a NUL character")
        return value

    def string_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """An array of non-empty strings (may be empty)."""
        value = self.get(name)
        if value is MISSING:
            return default
        if not isinstance(value, list):
            self.fail(name, f"must be an array of strings, not {type_name(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.fail_item(name, index, f"must be a string, not {type_name(item)}")
            if not item:
                self.fail_item(name, index, "must not be empty")
        return tuple(value)

    def optional_table(self, name: str, known: tuple[str, ...]) -> Table | None:
        """A table that may be absent."""
        return self.table(name, known, "") if self.has(name) else None

    def optional_tables(self, name: str, known: tuple[str, ...]) -> list[Table]:
        """An array of tables that may be absent or empty."""
        if self.get(name) in (MISSING, []):
            return []
        return self.tables(name, known, "")

    def table(self, name: str, known: tuple[str, ...], hint: str) -> Table:
        value = self.required(name, hint)
        if not isinstance(value, dict):
            self.fail(name, f"must be a table, not {type_name(value)}")
        return Table(self.ctx, self.key(name), value, known)

    def tables(self, name: str, known: tuple[str, ...], hint: str) -> list[Table]:
        """An array of tables; at least one."""
        value = self.required(name, hint)
        if not isinstance(value, list):
            self.fail(name, f"must be an array of tables, not {type_name(value)}")
        if not value:
            self.fail(name, "must have at least one entry")
        result = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail_item(name, index, f"must be a table, not {type_name(item)}")
            result.append(Table(self.ctx, f"{self.key(name)}[{index}]", item, known))
        return result


def document(data: Mapping[str, object], path: Path, known: tuple[str, ...]) -> Table:
    """
    The top of a parsed configuration file.

    @param data: the parsed TOML document.
    @param path: the file it came from (made absolute); relative paths in it
        are resolved against its directory.
    @param known: the top-level keys the file may have.

    @raise ConfigError: if C{data} has a key not in C{known}.
    """
    return Table(Context(Path(path).absolute()), "", data, known)
