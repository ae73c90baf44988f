"""The reproduce command (fig3, fig4): its parser, the cells of a figure, and main."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from byzbn import results
from byzbn.cli import runner
from byzbn.cli.errors import ArgumentError, HelpFormatter, OneLineParser, check, report
from byzbn.cli.options import (ATTACK_FLAGS, OUTPUT, add_run_options, aggregator_names, pre_aggregator_names,
                               run_defaults)
from byzbn.cli.plugins import load_plugins
from byzbn.cli.validate import Plan, csv_items, parse_pre, plan_from_args, pre_text
from byzbn.reproduce_report import FIG4_FIXED_LABELS, defended_label, write_report

PROG = "python -m byzbn.reproduce"
DESCRIPTION = """\
fig3  heterogeneity sweep, no Byzantine clients: the schemes centralized, naive, fixbn and fbn at every
      gamma in --gammas (gamma-similarity, the paper's "Modeling heterogeneity": 1 = IID, 0 = extreme
      non-IID); best and final test accuracy against gamma (fig3.png) and the curves (fig3_curves.png).
fig4  sign-flip on the BN means (the Byzantine clients send the opposite of the honest mean), schemes
      naive and fbn, scenarios no attack / no defense / NNM∘median / NNM∘trimmed-mean at every gamma in
      --gammas; accuracy against step (fig4.png: one panel per gamma and scheme).

Both take every option of python -m byzbn.attack_eval but those they sweep (--heterogeneity and --seed
become --gammas and --seeds, fig4's --defense becomes --defenses) or fix (fig3 has no Byzantine client,
so no attack or defense options), with the paper's defaults where they differ. --plugin FILE_OR_MODULE
(repeatable) is imported first, so --schemes, --attack, --pre and --defenses take the names it registers.
Every (gamma, seed[, defense]) cell is one byzbn.attack_eval output directory under --out
(gamma-0.5/seed-0/ in fig3, gamma-0/seed-1/median/ in fig4, ...), trained by attack_eval's plan
machinery with seeds 0 .. K-1, seed by seed. A finished cell holds done.json and is read back, never
retrained; an interrupted one continues from its checkpoints (attack_eval --resume), so rerunning the
same command finishes the job.
With K >= 2 seeds, tables give mean ± sample std (ddof = 1) and plots shade mean ± std.
Writes reproduce.json, summary.json, table.md and the PNGs into --out and prints the table.

Every bad argument prints one line to stderr and exits with status 2 before anything is written."""
ABOUT = {"fig3": "heterogeneity sweep without Byzantine clients (the paper's Figure 3)",
         "fig4": "sign-flip on the BN means with and without defenses (the paper's Figure 4)"}
DEFAULT_SCHEMES = {"fig3": "centralized,naive,fixbn,fbn", "fig4": "naive,fbn"}
DEFAULT_GAMMAS = {"fig3": "1,0.5,0.2,0", "fig4": "0.5,0"}
# The run options a figure replaces: --gammas and --seeds sweep --heterogeneity and --seed; fig4's
# --defenses sweeps --defense; fig3 has no Byzantine client.
SWEPT = ("--heterogeneity", "--seed")
SKIPPED = {"fig3": SWEPT + ATTACK_FLAGS, "fig4": SWEPT + ("--defense",)}
DONE = "done.json"


def _add_figure_options(p: argparse.ArgumentParser, figure: str) -> None:
    from byzbn.attacks import ATTACKS
    from byzbn.schemes import SCHEMES

    helps = {"--schemes": f"comma-separated normalization schemes, from {sorted(SCHEMES)} (python -m "
                          "byzbn.attack_eval --help describes them)",
             "--clients": "n: clients in total" + (" (all honest in fig3)" if figure == "fig3" else
                                                  ", Byzantine included"),
             "--quiet": "print only the final table"}
    defaults, choices = {"--schemes": DEFAULT_SCHEMES[figure]}, {}
    if figure == "fig4":
        defaults.update({"--attack-fields": "mean", "--pre": "nnm"})
        choices["--attack"] = sorted(ATTACKS)  # fig4 is about an attack: no 'none'
        helps.update({
            "--attack": "what the Byzantine clients submit (the paper: sign-flip)",
            "--attack-fields": "which BN statistics the attack replaces (the paper flips the means)",
            "--pre": f"comma-separated pre-aggregators from {pre_aggregator_names()}, applied in order before each "
                     "of --defenses, or none"})
    groups = add_run_options(p, skip=SKIPPED[figure], defaults=defaults, helps=helps, choices=choices)
    sweep = p.add_argument_group("sweep")
    sweep.add_argument("--gammas", default=DEFAULT_GAMMAS[figure],
                       help="comma-separated gamma-similarity levels in [0, 1] (1 = IID, 0 = extreme non-IID)")
    sweep.add_argument("--seeds", type=int, default=1,
                       help="K: run seeds 0 .. K-1; tables and plots give mean ± std")
    if figure == "fig4":
        sweep.add_argument("--defenses", default="median,trimmed-mean",
                           help=f"comma-separated robust rules applied after --pre, from "
                                f"{sorted(set(aggregator_names()) - {'mean'})}")
    groups[OUTPUT].add_argument("--out", default=None,
                                help=f"output directory, reused by a rerun (default: runs/{figure})")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="figure", metavar="{fig3,fig4}", required=True, parser_class=OneLineParser)
    for figure in ("fig3", "fig4"):
        _add_figure_options(sub.add_parser(figure, help=ABOUT[figure], description=ABOUT[figure],
                                           formatter_class=HelpFormatter), figure)
    return p


@dataclass(frozen=True)
class Cell:
    """One attack_eval output directory: a gamma, a seed and (fig4) a defense; `options` are its run options."""

    gamma: float
    seed: int
    defense: Optional[str]
    path: Path
    options: dict
    defended_only: bool  # fig4's second and later defenses: no-attack and attack already ran in the first

    def label(self, scenario: str) -> str:
        if self.defense is None:
            return FIG4_FIXED_LABELS[0]
        fixed = dict(zip(("no-attack", "attack"), FIG4_FIXED_LABELS))
        return fixed.get(scenario) or defended_label(self.defense, self.options["pre"])


def parse_gammas(text: str) -> list[float]:
    values = []
    for item in csv_items(text):
        try:
            g = float(item)
        except ValueError:
            raise ArgumentError(f"--gammas: {item!r} is not a number") from None
        check(0.0 <= g <= 1.0, f"--gammas: {item} is out of range: valid gammas lie in [0, 1]")
        values.append(g)
    check(bool(values), "--gammas is empty: give comma-separated gammas in [0, 1]")
    check(len(set(values)) == len(values), f"--gammas lists a gamma twice: {text!r}")
    return values


def parse_defenses(text: str) -> list[str]:
    defenses, valid = csv_items(text), sorted(set(aggregator_names()) - {"mean"})
    check(bool(defenses), f"--defenses is empty: give comma-separated rules from {valid}")
    for d in defenses:
        check(d in valid, f"--defenses: unknown robust rule {d!r}: valid rules are {valid}")
    check(len(set(defenses)) == len(defenses), f"--defenses lists a rule twice: {text!r}")
    return defenses


def gamma_name(g: float) -> str:
    return f"{g:g}"


def make_cells(args: argparse.Namespace, out: Path) -> list[Cell]:
    """The cells of the reproduction, in run order (seed, then gamma, then defense)."""
    gammas = parse_gammas(args.gammas)
    check(args.seeds >= 1, f"--seeds={args.seeds} is out of range: valid >= 1")
    shared = run_defaults()  # what the figure does not set runs as attack_eval's default
    shared.update({key: value for key, value in vars(args).items() if key in shared})
    if args.figure == "fig3":
        variants = [(None, dict(byzantine=0, attack="none", defense="mean"))]
    else:
        variants = [(d, dict(defense=d)) for d in parse_defenses(args.defenses)]
    cells = []
    for seed in range(args.seeds):  # seed-major: the first seed's picture is complete before the next starts
        for g in gammas:
            for k, (defense, extra) in enumerate(variants):
                path = out / f"gamma-{gamma_name(g)}" / f"seed-{seed}"
                path = path / defense if defense is not None else path
                options = {**shared, **extra, "heterogeneity": f"gamma:{g!r}", "seed": seed, "out": str(path)}
                cells.append(Cell(g, seed, defense, path, options, defended_only=k > 0))
    return cells


def cell_plan(cell: Cell) -> Plan:
    """attack_eval's validated plan for the cell: resuming it when it has started, otherwise fresh."""
    resume = (cell.path / "config.json").is_file()
    try:
        plan = plan_from_args(argparse.Namespace(**cell.options, resume=resume))
    except ArgumentError as error:
        if resume and "differ" in str(error):
            raise ArgumentError(f"--out holds runs made with other arguments ({cell.path}): {error}; "
                                f"rerun with the same arguments or choose another --out") from error
        raise
    if cell.defended_only:
        plan.runs = [run for run in plan.runs if run[1] == "attack+defense"]
        plan.scenarios = ["attack+defense"]
    return plan


def _read_cell(cell: Cell, wanted: set) -> Optional[tuple[list[dict], list[dict]]]:
    """The finished cell's summary entries and metric records of the `wanted` runs; None if it lacks one."""
    if not (cell.path / DONE).is_file():
        return None
    saved = json.loads((cell.path / DONE).read_text())["summary"]
    summary = [e for e in saved if (e["scheme"], e["scenario"]) in wanted]
    if {(e["scheme"], e["scenario"]) for e in summary} != wanted:
        return None  # e.g. --defenses reordered: the cell now owes runs it did not make (resume makes them)
    lines = (cell.path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return summary, [r for r in records if (r["scheme"], r["scenario"]) in wanted]


def _tag(cell: Cell, items: list[dict]) -> list[dict]:
    return [dict(item, gamma=cell.gamma, seed=cell.seed, label=cell.label(item["scenario"])) for item in items]


def run_cells(cells: list[Cell], figure: str, out: Path, config: dict,
              quiet: bool = False) -> tuple[list[dict], list[dict]]:
    """Train the unfinished cells, reading back the finished ones; returns the tagged entries and records.

    The report is rewritten after every cell, so --out shows the partial tables while the rest trains.
    """
    entries, records = [], []
    for cell in cells:
        plan = cell_plan(cell)
        wanted = set(plan.runs)
        done = _read_cell(cell, wanted)
        if done is None:
            if not quiet:
                defense = f" {cell.defense}" if cell.defense else ""
                print(f"[{figure} gamma={gamma_name(cell.gamma)} seed={cell.seed}{defense}] -> {cell.path}", flush=True)
            summary = runner.run_plan(plan)
            text = json.dumps({"summary": summary}, indent=2, sort_keys=True) + "\n"
            results.atomic_write_text(cell.path / DONE, text)
            done = _read_cell(cell, wanted)
        summary, run_records = done
        del plan  # its dataset: one cell's tensors in memory at a time
        entries += _tag(cell, summary)
        records += _tag(cell, run_records)
        write_report(out, figure, config, entries, records)
    return entries, records


def _has_files(path: Path) -> bool:
    return any(p.is_file() for p in path.rglob("*"))


def plan_reproduction(argv: Optional[list[str]] = None) -> tuple[argparse.Namespace, Path, list[Cell]]:
    """Parse and validate everything (each cell through attack_eval's validator) before --out is touched."""
    args = build_parser().parse_args(argv)
    if args.figure == "fig4":  # one spelling in the cells' configs and the labels: 'nnm', 'none', 'nnm,bucketing'
        args.pre = pre_text(parse_pre(args.pre))
    out = Path(args.out) if args.out is not None else Path("runs") / args.figure
    check(not out.exists() or out.is_dir(), f"--out {out} exists and is not a directory")
    saved = out / "reproduce.json"
    if saved.is_file():
        made = json.loads(saved.read_text()).get("figure")
        check(made == args.figure, f"--out {out} holds a {made} reproduction, not {args.figure}: choose another --out")
    cells = make_cells(args, out)
    for cell in cells:
        if cell.path.is_dir() and not (cell.path / "config.json").is_file():
            check(not _has_files(cell.path), f"--out holds {cell.path} without config.json: it is not a "
                                             f"reproduction cell; remove it or choose another --out")
            # Killed before attack_eval wrote config.json: only empty directories, which attack_eval's
            # fresh-output check would refuse.
            shutil.rmtree(cell.path)
        cell_plan(cell)  # raises on any bad argument or on a cell made with other arguments
    return args, out, cells


def main(argv: Optional[list[str]] = None) -> int:
    try:
        load_plugins(argv)
        args, out, cells = plan_reproduction(argv)
    except ArgumentError as error:
        return report(PROG, error)
    start = time.perf_counter()
    config = {k: v for k, v in sorted(vars(args).items())}
    config["plugins"] = config.pop("plugin")
    config.update(out=str(out), gammas=parse_gammas(args.gammas), schemes=csv_items(args.schemes),
                  cells=[str(c.path) for c in cells])
    out.mkdir(parents=True, exist_ok=True)
    results.atomic_write_text(out / "reproduce.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    entries, records = run_cells(cells, args.figure, out, config, quiet=args.quiet)
    table = write_report(out, args.figure, config, entries, records, wall_s=time.perf_counter() - start)
    print(table, end="")
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
