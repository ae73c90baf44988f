"""python -m byzbn.reproduce {fig3,fig4}: the FBN paper's Figures 3 and 4 with one command.

The command lives in byzbn.cli.reproduce (its parser and main: the sweep presets fig3/fig4 of byzbn.grid;
the tables and plots in byzbn.reproduce_report); this module is its `python -m` entry point. `--help`
describes both figures.
"""
from __future__ import annotations

import sys

from byzbn.cli.reproduce import PROG, build_parser, main, plan_reproduction

__all__ = ["PROG", "build_parser", "main", "plan_reproduction"]

if __name__ == "__main__":
    sys.exit(main())
