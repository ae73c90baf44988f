"""Bad run arguments: ArgumentError and the helpers that raise it (reported by the commands on one line, exit 2).

Only genuine argument problems are reported that way: the explicit checks, and the ValueErrors raised
while building the registered objects (attack, defense, schemes, model) and the dataset from the given
arguments, which the validator wraps at those call sites with `flag_errors`. Any other exception is a
real error: it propagates with its traceback, and Python exits with status 1, never 2.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator


class ArgumentError(Exception):
    """A bad command-line argument (reported on one line, exit status 2).

    Deliberately not a ValueError: code that catches ValueError around a run must not swallow it, and
    a command reports only this class as a bad argument.
    """


def check(condition: bool, message: str) -> None:
    """An explicit argument check."""
    if not condition:
        raise ArgumentError(message)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@contextmanager
def flag_errors(flags: str) -> Iterator[None]:
    """Report a ValueError raised inside as a bad value of `flags` (the option(s) the object was built from).

    Wrap only calls whose ValueErrors can come from the arguments: building a registered object or
    loading the dataset from them. A message that already names its flag (starts with '--') is kept.
    """
    try:
        yield
    except ValueError as error:
        message = one_line(error)
        raise ArgumentError(message if message.startswith("--") else f"{flags}: {message}") from error


# How the rules word a refusal of non-finite input ("holds NaN/Inf", "must be finite", "non-finite").
NON_FINITE = re.compile(r"\bnan\b|\binf\b|finite", re.IGNORECASE)


def refuses_non_finite(error: BaseException) -> bool:
    """Whether `error` is a rule refusing NaN/Inf input: inside a run that marks the run diverged."""
    return isinstance(error, ValueError) and NON_FINITE.search(str(error)) is not None


def breaks_contract(error: BaseException) -> bool:
    """Whether `error` is an output-contract check failing (an attack, pre-aggregator or rule that "must return"
    a tensor of some shape returned something else): the fault of the object called, typically a plugin."""
    return isinstance(error, ValueError) and "must return" in str(error)


class RunError(Exception):
    """A run that cannot go on for a reason its message states in one line (reported so, exit status 1)."""


__all__ = ["ArgumentError", "RunError", "check", "one_line", "flag_errors", "NON_FINITE", "refuses_non_finite",
           "breaks_contract"]
