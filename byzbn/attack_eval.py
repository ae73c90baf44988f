"""python -m byzbn.attack_eval: BN schemes under Byzantine attack, with and without a robust defense.

The command lives in byzbn.cli (byzbn.cli.attack_eval: parser and main) on top of byzbn.runs
(byzbn.runs.config: the Plan; byzbn.runs.execute: training); this module is its `python -m` entry
point. `--help` explains every option.
"""
from __future__ import annotations

import sys

from byzbn.cli.attack_eval import PROG, build_parser, main
from byzbn.runs.config import Plan, plan_from_args
from byzbn.runs.errors import ArgumentError

__all__ = ["PROG", "ArgumentError", "Plan", "build_parser", "main", "plan_from_args"]

if __name__ == "__main__":
    sys.exit(main())
