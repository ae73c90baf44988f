"""python -m byzbn.sweep: a grid of attack_eval runs — heatmaps, breakdown curves, worst-case tables.

The command lives in byzbn.cli.sweep (its parser and main; the config keys in byzbn.cli.sweep_config) on
the sweep engine byzbn.grid; this module is its `python -m` entry point. `--help` explains every option.
"""
from __future__ import annotations

import sys

from byzbn.cli.sweep import PROG, build_parser, main

__all__ = ["PROG", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
