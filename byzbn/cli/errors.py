"""Bad arguments, shared by every byzbn command: one line on stderr, exit status 2, nothing written.

ArgumentError and its helpers live in byzbn.runs.errors (the run validator raises them) and are
re-exported here; this module adds the one-line parser, the help formatter and the report. Only
genuine argument problems are reported that way: argparse's own errors and the validator's
ArgumentErrors. Any other exception is a real error: it propagates with its traceback, and Python
exits with status 1, never 2.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import Callable, Optional, Sequence, TypeVar

from byzbn.runs.errors import ArgumentError, RunError, check, flag_errors, one_line
from byzbn.runs.paths import removing_if_empty, write_failure

T = TypeVar("T")


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


def report(prog: str, error: ArgumentError) -> int:
    """Print the bad argument on one stderr line; the exit status of a bad argument."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    return 2


def run_writing(prog: str, dirs: Sequence, work: Callable[[], T]) -> tuple[int, Optional[T]]:
    """(0, work()) after the arguments were validated; (1, None) with one stderr line if writing failed.

    What can still go wrong once writing started is reported on one line, exit status 1: the disk filling
    or going away (OSError), or a run stopped by a RunError (a plugin breaking its contract mid-run). A
    directory of `dirs` that this call created and the failure left empty is removed.
    """
    try:
        with ExitStack() as stack:
            for path in dirs:
                stack.enter_context(removing_if_empty(path))
            return 0, work()
    except OSError as error:
        print(f"{prog}: error: {write_failure(error)}", file=sys.stderr)
    except RunError as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    return 1, None


__all__ = ["ArgumentError", "OneLineParser", "HelpFormatter", "check", "one_line", "flag_errors", "report",
           "run_writing"]
