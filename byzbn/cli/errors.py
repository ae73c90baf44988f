"""Bad arguments, shared by every byzbn command: one line on stderr, exit status 2, nothing written.

Only genuine argument problems are reported that way: argparse's own errors, the commands' explicit
checks, and the ValueErrors raised while building the registered objects (attack, defense, schemes,
model) and the dataset from the given arguments, which the validator wraps at those call sites with
`flag_errors`. Any other exception is a real error: it propagates with its traceback, and Python exits
with status 1, never 2.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Iterator


class ArgumentError(Exception):
    """A bad command-line argument (reported on one line, exit status 2).

    Deliberately not a ValueError: code that catches ValueError around a run must not swallow it, and
    a command reports only this class as a bad argument.
    """


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr (no usage block), exit status 2, and no abbreviations.

    Abbreviations are off because the commands share options whose names are prefixes of each other's
    (reproduce's --seeds would silently take attack_eval's --seed 1 as "one seed"), and because --plugin
    is picked out of argv by its full name before the parser exists.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ArgumentError(message)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's layout; append '(default: X)' where there is a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


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


def report(prog: str, error: ArgumentError) -> int:
    """Print the bad argument on one stderr line; the exit status of a bad argument."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    return 2


__all__ = ["ArgumentError", "OneLineParser", "HelpFormatter", "check", "one_line", "flag_errors", "report"]
