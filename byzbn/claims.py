"""python -m byzbn.claims: the seed papers' claims checked on their sweep presets (docs/RESULTS.md).

The command lives in byzbn.cli.claims, the sections in byzbn.grid.claims; this module is its entry point.
"""
from __future__ import annotations

import sys

from byzbn.cli.claims import PROG, build_parser, main

__all__ = ["PROG", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
