"""python -m byzbn.reproduce {fig3,fig4}: the FBN paper's Figures 3 and 4 with one command.

fig3  heterogeneity sweep, no Byzantine clients: the schemes centralized, naive, fixbn and fbn at every
      gamma in --gammas (gamma-similarity, the paper's "Modeling heterogeneity": 1 = IID, 0 = extreme
      non-IID); best and final test accuracy against gamma (fig3.png) and the curves (fig3_curves.png).
fig4  sign-flip on the BN means (the Byzantine clients send the opposite of the honest mean), schemes
      naive and fbn, scenarios no attack / no defense / NNM∘median / NNM∘trimmed-mean at every gamma in
      --gammas; accuracy against step (fig4.png: one panel per gamma and scheme).

Every (gamma, seed[, defense]) cell is one byzbn.attack_eval output directory under --out
(gamma-0.5/seed-0/ in fig3, gamma-0/seed-1/median/ in fig4, ...), trained by attack_eval's plan
machinery with seeds 0 .. K-1, seed by seed. A finished cell holds done.json and is read back, never
retrained; an interrupted one continues from its checkpoints (attack_eval --resume), so rerunning the
same command finishes the job.
With K >= 2 seeds, tables give mean ± sample std (ddof = 1) and plots shade mean ± std.
Writes reproduce.json, summary.json, table.md and the PNGs into --out and prints the table.

Every bad argument prints one line to stderr and exits with status 2 before anything is written.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from byzbn import attack_eval, results
from byzbn.attack_eval import ArgumentError, OneLineParser
from byzbn.reproduce_report import write_report

PROG = "python -m byzbn.reproduce"
DEFAULT_SCHEMES = {"fig3": "centralized,naive,fixbn,fbn", "fig4": "naive,fbn"}
DEFAULT_GAMMAS = {"fig3": "1,0.5,0.2,0", "fig4": "0.5,0"}
DONE = "done.json"
# What an attack_eval scenario is called in the reproduction (the paper's legend).
NO_ATTACK, NO_DEFENSE = "no attack", "no defense"


def defended_label(defense: str) -> str:
    return f"nnm∘{defense}"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _add_shared(p: argparse.ArgumentParser, figure: str) -> None:
    from byzbn.schemes import SCHEMES

    p.add_argument("--gammas", default=DEFAULT_GAMMAS[figure],
                   help="comma-separated gamma-similarity levels in [0, 1] (1 = IID, 0 = extreme non-IID)")
    p.add_argument("--seeds", type=int, default=1, help="K: run seeds 0 .. K-1; tables and plots give mean ± std")
    p.add_argument("--schemes", default=DEFAULT_SCHEMES[figure], help=f"comma-separated, from {sorted(SCHEMES)}")
    who = " (all honest in fig3)" if figure == "fig3" else ", Byzantine included"
    p.add_argument("--clients", type=int, default=10, help="n: clients in total" + who)
    p.add_argument("--fixbn-freeze", type=float, default=0.5, help="fixbn's T* as a fraction of --steps")
    p.add_argument("--dataset", default="mnist5k",
                   help="mnist5k, digits, cifar10 (under --data-root) or npz:PATH, as in byzbn.attack_eval")
    p.add_argument("--data-root", default=None, help="directory holding (or receiving) torchvision's CIFAR-10")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-root (needs network)")
    p.add_argument("--steps", type=int, default=300, help="DSGD steps per run")
    p.add_argument("--batch-size", type=int, default=16, help="samples per honest client per step")
    p.add_argument("--lr", type=float, default=0.05, help="server learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="client momentum beta")
    p.add_argument("--width", type=float, default=0.125, help="CNN width multiplier (1.0 = the paper's model)")
    p.add_argument("--eval-every", type=int, default=25, help="evaluate test accuracy every this many steps")
    p.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint each run every this many steps")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--out", default=None, help=f"output directory, reused by a rerun (default: runs/{figure})")
    p.add_argument("--quiet", action="store_true", help="print only the final table")


def build_parser() -> OneLineParser:
    from byzbn.attacks import ATTACKS
    from byzbn.defenses import DEFENSES

    p = OneLineParser(prog=PROG, description=__doc__.split("\n", 1)[1].strip(), formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="figure", metavar="{fig3,fig4}", required=True, parser_class=OneLineParser)
    about = {"fig3": "heterogeneity sweep without Byzantine clients (the paper's Figure 3)",
             "fig4": "sign-flip on the BN means with and without defenses (the paper's Figure 4)"}
    fig3 = sub.add_parser("fig3", help=about["fig3"], description=about["fig3"], formatter_class=_HelpFormatter)
    _add_shared(fig3, "fig3")
    fig4 = sub.add_parser("fig4", help=about["fig4"], description=about["fig4"], formatter_class=_HelpFormatter)
    _add_shared(fig4, "fig4")
    fig4.add_argument("--byzantine", type=int, default=2, help="f: Byzantine clients (f < n/2)")
    fig4.add_argument("--attack", default="sign-flip", choices=sorted(ATTACKS), help="the attack on the statistics")
    fig4.add_argument("--attack-fields", default="mean", choices=["mean", "var", "both"],
                      help="which BN statistics the attack replaces (the paper flips the means)")
    fig4.add_argument("--defenses", default="median,trimmed-mean",
                      help=f"comma-separated robust rules applied after NNM, from {sorted(set(DEFENSES) - {'mean'})}")
    return p


@dataclass(frozen=True)
class Cell:
    """One attack_eval output directory: a gamma, a seed and (fig4) a defense."""

    gamma: float
    seed: int
    defense: Optional[str]
    path: Path
    argv: tuple[str, ...]
    defended_only: bool  # fig4's second and later defenses: no-attack and attack already ran in the first

    def label(self, scenario: str) -> str:
        if self.defense is None:
            return NO_ATTACK
        return {"no-attack": NO_ATTACK, "attack": NO_DEFENSE}.get(scenario) or defended_label(self.defense)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_gammas(text: str) -> list[float]:
    values = []
    for item in _csv(text):
        try:
            g = float(item)
        except ValueError:
            raise ArgumentError(f"--gammas: {item!r} is not a number") from None
        if not 0.0 <= g <= 1.0:
            raise ArgumentError(f"--gammas: {item} is out of range: valid gammas lie in [0, 1]")
        values.append(g)
    if not values:
        raise ArgumentError("--gammas is empty: give comma-separated gammas in [0, 1]")
    if len(set(values)) != len(values):
        raise ArgumentError(f"--gammas lists a gamma twice: {text!r}")
    return values


def gamma_name(g: float) -> str:
    return f"{g:g}"


def make_cells(args: argparse.Namespace, out: Path) -> list[Cell]:
    """The cells of the reproduction, in run order (seed, then gamma, then defense)."""
    from byzbn.defenses import DEFENSES

    gammas = parse_gammas(args.gammas)
    if args.seeds < 1:
        raise ArgumentError(f"--seeds={args.seeds} is out of range: valid >= 1")
    common = ["--dataset", args.dataset, "--schemes", args.schemes, "--clients", str(args.clients),
              "--fixbn-freeze", repr(args.fixbn_freeze), "--steps", str(args.steps), "--batch-size",
              str(args.batch_size), "--lr", repr(args.lr), "--momentum", repr(args.momentum), "--width",
              repr(args.width), "--eval-every", str(args.eval_every), "--checkpoint-every",
              str(args.checkpoint_every), "--device", args.device]
    common += ["--data-root", args.data_root] if args.data_root is not None else []
    common += ["--download"] if args.download else []
    common += ["--quiet"] if args.quiet else []
    if args.figure == "fig3":
        variants = [(None, ["--byzantine", "0", "--attack", "none", "--defense", "mean"])]
    else:
        defenses = _csv(args.defenses)
        valid = sorted(set(DEFENSES) - {"mean"})
        if not defenses:
            raise ArgumentError(f"--defenses is empty: give comma-separated rules from {valid}")
        for d in defenses:
            if d not in valid:
                raise ArgumentError(f"--defenses: unknown robust rule {d!r}: valid rules are {valid}")
        if len(set(defenses)) != len(defenses):
            raise ArgumentError(f"--defenses lists a rule twice: {args.defenses!r}")
        attack = ["--byzantine", str(args.byzantine), "--attack", args.attack, "--target", "stats",
                  "--attack-fields", args.attack_fields, "--pre", "nnm"]
        variants = [(d, attack + ["--defense", d]) for d in defenses]
    cells = []
    for seed in range(args.seeds):  # seed-major: the first seed's picture is complete before the next starts
        for g in gammas:
            for k, (defense, extra) in enumerate(variants):
                path = out / f"gamma-{gamma_name(g)}" / f"seed-{seed}"
                path = path / defense if defense is not None else path
                argv = common + extra + ["--heterogeneity", f"gamma:{g!r}", "--seed", str(seed), "--out", str(path)]
                cells.append(Cell(g, seed, defense, path, tuple(argv), defended_only=k > 0))
    return cells


def _has_files(path: Path) -> bool:
    return any(p.is_file() for p in path.rglob("*"))


def cell_plan(cell: Cell) -> attack_eval.Plan:
    """attack_eval's validated plan for the cell: resuming it when it has started, otherwise fresh."""
    argv = list(cell.argv)
    if (cell.path / "config.json").is_file():
        argv.append("--resume")
    try:
        plan = attack_eval.plan_from_args(attack_eval.build_parser().parse_args(argv))
    except ArgumentError as error:
        if "--resume" in argv and "differ" in str(error):
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
            summary = attack_eval.run_plan(plan)
            text = json.dumps({"summary": summary}, indent=2, sort_keys=True) + "\n"
            results.atomic_write_text(cell.path / DONE, text)
            done = _read_cell(cell, wanted)
        summary, run_records = done
        del plan  # its dataset: one cell's tensors in memory at a time
        entries += _tag(cell, summary)
        records += _tag(cell, run_records)
        write_report(out, figure, config, entries, records)
    return entries, records


def plan_reproduction(argv: Optional[list[str]] = None) -> tuple[argparse.Namespace, Path, list[Cell]]:
    """Parse and validate everything (each cell through attack_eval) before --out is touched."""
    args = build_parser().parse_args(argv)
    for name in ("width", "lr", "momentum", "fixbn_freeze"):
        value = getattr(args, name)
        if not math.isfinite(value):
            raise ArgumentError(f"--{name.replace('_', '-')}={value} is out of range: valid finite")
    out = Path(args.out) if args.out is not None else Path("runs") / args.figure
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} exists and is not a directory")
    saved = out / "reproduce.json"
    if saved.is_file() and json.loads(saved.read_text()).get("figure") != args.figure:
        raise ArgumentError(f"--out {out} holds a {json.loads(saved.read_text()).get('figure')} reproduction, "
                            f"not {args.figure}: choose another --out")
    cells = make_cells(args, out)
    for cell in cells:
        if cell.path.is_dir() and not (cell.path / "config.json").is_file():
            if _has_files(cell.path):
                raise ArgumentError(f"--out holds {cell.path} without config.json: it is not a reproduction "
                                    f"cell; remove it or choose another --out")
            # Killed before attack_eval wrote config.json: only empty directories, which attack_eval's
            # fresh-output check would refuse.
            shutil.rmtree(cell.path)
        cell_plan(cell)  # raises on any bad argument or on a cell made with other arguments
    return args, out, cells


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args, out, cells = plan_reproduction(argv)
    except (ArgumentError, ValueError) as error:
        message = " ".join(str(error).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    config = {k: v for k, v in sorted(vars(args).items())}
    config.update(out=str(out), gammas=parse_gammas(args.gammas), schemes=_csv(args.schemes),
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
