"""Command-line values the tools share: one error that names the option, one integer-list parser."""

from __future__ import annotations


class OptionError(ValueError):
    """A command-line value is invalid; the message names the option to fix."""


def comma_separated(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated value."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_integers(option: str, text: str, low: int) -> list[int]:
    """Comma-separated integers of at least ``low``; raise ``OptionError`` naming ``option``."""
    values = []
    for item in comma_separated(text):
        try:
            values.append(int(item))
        except ValueError:
            raise OptionError(f"{option}: {item!r} is not an integer") from None
        if values[-1] < low:
            raise OptionError(f"{option}: every value must be at least {low}, got {values[-1]}")
    return values
