"""The exception family for bad input, and the checks that raise it.

Every message names the offending file or value and says what to do about it; the CLI prints it
as a single line on stderr and exits with code 2. Library messages speak of values and files;
:class:`InvalidOption` also records which option was wrong, so a front end can name its own flag
(the CLI writes ``--chunk -5: …`` where the library says ``chunk -5: …``).
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys


class RSGeoPruneError(Exception):
    """Bad input that the user can fix: the message names the file or value and the fix."""


class InvalidOption(RSGeoPruneError, ValueError):
    """An option value out of its range: ``option`` (python name), ``value`` and what it must be."""

    def __init__(self, option: str, value, must: str):
        self.option, self.value, self.must = option, value, must
        super().__init__(f"{option} {value!r}: {must}")

    def with_flag(self, flag: str) -> str:
        """The message with a front end's name for the option (``--chunk``)."""
        return f"{flag} {self.value!r}: {self.must}"


def one_line(exc: RSGeoPruneError) -> str:
    """What a command line prints for ``exc``: an :class:`InvalidOption` with its flag (``--chunk -5: …``),
    any message folded onto one line."""
    text = exc.with_flag("--" + exc.option.replace("_", "-")) if isinstance(exc, InvalidOption) else str(exc)
    return " ".join(text.split())


def check_number(
    option: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    whole: bool = False,
    example=None,
) -> None:
    """Refuse ``value`` unless it is a finite number (an integer with ``whole``) within ``[low, high]``
    (``open_low`` / ``open_high`` exclude the bound): ``lr nan: must be a finite number > 0 (e.g. 0.0001)``."""
    ok = isinstance(value, numbers.Integral if whole else numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if ok:
        return
    if low is not None and high is not None:
        where = f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
        where = f" {'>' if open_low else '>='} {low:g}"
    elif high is not None:
        where = f" {'<' if open_high else '<='} {high:g}"
    else:
        where = ""
    raise InvalidOption(
        option,
        value,
        f"must be {'a whole' if whole else 'a finite'} number{where}"
        + (f" (e.g. {example})" if example is not None else ""),
    )


def check_seed(option: str, value) -> None:
    """A seed: a whole number in [0, 2**32), as every generator of the package takes it."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise InvalidOption(option, value, "must be a whole number in [0, 2**32) (e.g. 0)")


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line too (``rsgeo-prune tiles: argument --x: …``), exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


__all__ = ["ArgumentParser", "InvalidOption", "RSGeoPruneError", "check_number", "check_seed", "one_line"]
