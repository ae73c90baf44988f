"""The claims command: `python -m byzbn.claims PRESET OUT [--page docs/RESULTS.md]`."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Optional

from byzbn.cli.errors import ArgumentError, HelpFormatter, OneLineParser, check, report, run_writing
from byzbn.runs.errors import one_line
from byzbn.runs.limits import read_json_argument
from byzbn.runs.paths import check_writable_dir
from byzbn.grid.claims import SECTIONS, section_of
from byzbn.grid.claims.page import render, save_images, write_block
from byzbn.grid.engine import RECORD
from byzbn.grid.table import read_results

PROG = "python -m byzbn.claims"
DESCRIPTION = """\
The seed papers' claims checked on a finished sweep of their preset (python -m byzbn.sweep --preset
PRESET --out OUT): the claim table (claim | paper | byzbn | rule | reproduced?, the verdict yes, no or
inconclusive from the 95 % interval over seeds of each paired difference), the data tables and the figures,
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
        record = read_json_argument(out / RECORD, PROG.split()[-1])
        check(record.get("name") == args.preset,
              f"{out} is a sweep of {record.get('name')!r}, not of preset {args.preset!r}")
        try:
            section = section_of(args.preset, read_results(out / "results.csv"), record)
        except (ValueError, KeyError, TypeError, csv.Error) as error:
            raise ArgumentError(f"{out} holds a damaged sweep (results.csv or {RECORD}: "
                                f"{type(error).__name__}: {one_line(error)})") from error
        if args.page is None:
            check_writable_dir(out, "OUT")
        else:
            check_writable_dir(Path(args.page).parent, "--page")
            check_writable_dir(Path(args.images) if args.images else Path(args.page).parent / "results", "--images")
    except ArgumentError as error:
        return report(PROG, error)
    return run_writing(PROG, [], lambda: _write(args, out, section, record))[0]


def _write(args, out: Path, section, record: dict) -> int:
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
