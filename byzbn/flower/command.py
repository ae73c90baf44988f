"""python -m byzbn.flower: attack_eval's comparison on Flower's Simulation Engine, in this process."""
from __future__ import annotations

import sys
from typing import Optional

from byzbn.cli.errors import ArgumentError, report, run_writing
from byzbn.flower.experiment import PROG, parse
from byzbn.runs import results


def main(argv: Optional[list[str]] = None) -> int:
    try:
        experiment = parse(argv)
    except ArgumentError as error:
        return report(PROG, error)
    from byzbn.flower.simulation import simulate

    plan = experiment.plan
    code, summary = run_writing(PROG, [plan.out], lambda: simulate(experiment))
    if code:
        return code
    print(results.format_table(summary, plan.schemes, plan.scenarios), end="")
    print(f"outputs in {plan.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
