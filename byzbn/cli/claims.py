"""The claims command: `python -m byzbn.claims PRESET OUT [--page docs/RESULTS.md]`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from byzbn.cli.errors import ArgumentError, HelpFormatter, OneLineParser, check, report
from byzbn.grid.claims import SECTIONS, section_of
from byzbn.grid.claims.page import render, save_images, write_block
from byzbn.grid.engine import RECORD
from byzbn.grid.table import read_results

PROG = "python -m byzbn.claims"
DESCRIPTION = """\
The seed papers' claims checked on a finished sweep of their preset (python -m byzbn.sweep --preset
PRESET --out OUT): the claim table (claim | paper | byzbn | reproduced?), the data tables and the figures,
all computed from OUT/results.csv and OUT/sweep.json. Without --page the markdown is printed and the
figures are written into OUT; with --page the block between the preset's markers in PAGE is replaced
(appended when absent) and the figures go to --images (default: PAGE's folder/results).
"""


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("preset", choices=sorted(SECTIONS), help="the preset whose sweep OUT is")
    parser.add_argument("out", help="the sweep's output directory (results.csv, sweep.json)")
    parser.add_argument("--page", default=None, help="the docs page to write the block into (docs/RESULTS.md)")
    parser.add_argument("--images", default=None, help="where the figures go (default: PAGE's folder/results)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        out = Path(args.out)
        check((out / "results.csv").is_file() and (out / RECORD).is_file(),
              f"{out} holds no finished sweep (results.csv and {RECORD})")
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
        check(record.get("name") == args.preset,
              f"{out} is a sweep of {record.get('name')!r}, not of preset {args.preset!r}")
        section = section_of(args.preset, read_results(out / "results.csv"), record)
    except ArgumentError as error:
        return report(PROG, error)
    if args.page is None:
        save_images(section, out, out)
        print(render(section, record), end="")
        return 0
    page = Path(args.page)
    images = Path(args.images) if args.images else page.parent / "results"
    save_images(section, out, images)
    link = Path(images).resolve().relative_to(page.parent.resolve()).as_posix() + "/"
    write_block(page, args.preset, render(section, record, image_dir=link))
    print(f"{PROG}: wrote the {args.preset} block into {page} (images in {images})")
    return 0


__all__ = ["PROG", "build_parser", "main"]
