"""Argument types shared by the command groups (argparse C{type=} callables)."""

from __future__ import annotations

import argparse

import attrs


def at_least(minimum: int, *, unit: str = "") -> WholeNumber:
    """
    An argparse type: a whole number no smaller than C{minimum}.

    @param unit: what the number counts (C{"seconds"}), named in the error.
    """
    return WholeNumber(minimum, unit)


@attrs.frozen
class WholeNumber:
    """A whole number of at least C{minimum}, as an argparse type."""

    minimum: int
    unit: str

    def __call__(self, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            what = f"a whole number of {self.unit}" if self.unit else "a whole number"
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if number < self.minimum:
            if self.minimum == 0:
                raise argparse.ArgumentTypeError(f"{value!r} is negative")
            raise argparse.ArgumentTypeError(f"{value!r} must be at least {self.minimum}")
        return number


def comma_list(value: str) -> list[str]:
    """A comma-separated list on the command line; empty items dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]
