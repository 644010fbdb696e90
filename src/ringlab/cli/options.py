"""Option types shared by the ``ringlab`` commands: argparse ``type=`` callables that turn a bad
value into a usage error (status 2) naming what was expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["define", "int_in"]


def define(text: str) -> tuple[str, int]:
    """``-D NAME=VALUE`` or ``-D NAME`` (= 1)."""
    name, sep, value = text.partition("=")
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"-D wants NAME or NAME=VALUE with NAME an identifier, got {text!r}")
    if not sep:
        return name, 1
    try:
        return name, int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-D {name}: value {value!r} is not an integer") from None


def int_in(low: int, high: int | None, what: str = "") -> Callable[[str], int]:
    """A whole number (decimal or 0x hex) from ``low`` to ``high`` (no upper bound if None);
    ``what`` says why the range is what it is."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            reason = f" ({what})" if what else ""
            raise argparse.ArgumentTypeError(f"must be {bound}{reason}, got {value}")
        return value

    return parse


def number_in(low: float, high: float, unit: str) -> Callable[[str], float]:
    """A number above ``low`` and at most ``high`` (``unit`` names what it counts)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(
                f"expected {unit} above {low:g} and at most {high:g}, got {text!r}"
            )
        return value

    return parse
