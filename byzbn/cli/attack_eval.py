"""The attack_eval command: its description, parser (the shared run options plus --out/--resume) and main."""
from __future__ import annotations

import sys
from typing import Optional

from byzbn.cli.errors import ArgumentError, HelpFormatter, OneLineParser, report, run_writing
from byzbn.cli.options import OUTPUT, add_run_options
from byzbn.cli.plugins import load_plugins
from byzbn.runs import execute, results
from byzbn.runs.build import SCHEME_SUMMARY
from byzbn.runs.config import plan_from_args

PROG = "python -m byzbn.attack_eval"
DESCRIPTION = """\
For every scheme in --schemes the runner trains the FBN paper's CNN with Robust-DSGD (or FedAvg with
--algorithm fedavg) on n clients, f of them Byzantine (byzbn.fl.dsgd, byzbn.fl.fedavg), in three
scenarios that share the data partition and the seed:

    no-attack        the Byzantine clients submit the no-op honest mean; the server averages
    attack           the attack (--attack) on the --target channel(s); the server averages
    attack+defense   the same attack; the server aggregates the attacked channel(s) with --defense

(--attack none runs no-attack only; the centralized reference has no Byzantine clients and runs
no-attack only, and so does groupnorm under --target stats: it exchanges no statistics.) Schemes:

{schemes}
It prints final and best test accuracy per scheme × scenario and writes to --out:
config.json, metrics.jsonl, summary.json, summary.csv, curves.png and checkpoints/.

--plugin FILE_OR_MODULE (repeatable) is imported before the other arguments are checked: the rules,
pre-aggregators, attacks and schemes it registers are selectable by name (--defense mine).
Every bad argument prints one line to stderr and exits with status 2 before anything is written; so does
a run whose estimated peak memory exceeds the memory available (BYZBN_MAX_MEMORY_GB=G sets the limit)."""


def build_parser() -> OneLineParser:
    """attack_eval's parser; the --attack/--defense choices are the registries' names at this moment."""
    p = OneLineParser(prog=PROG, description=DESCRIPTION.replace("{schemes}", SCHEME_SUMMARY),
                      formatter_class=HelpFormatter)
    groups = add_run_options(p)
    out = groups[OUTPUT]
    out.add_argument("--out", default=None, help="output directory (default: runs/<timestamp>)")
    out.add_argument("--resume", action="store_true",
                     help="continue the runs in --out from their checkpoints, skipping finished ones")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    try:
        load_plugins(argv)
        plan = plan_from_args(build_parser().parse_args(argv))
    except ArgumentError as error:
        return report(PROG, error)
    code, summary = run_writing(PROG, [plan.out], lambda: execute.run_plan(plan))
    if code:
        return code
    print(results.format_table(summary, plan.schemes, plan.scenarios), end="")
    print(f"outputs in {plan.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
