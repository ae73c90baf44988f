"""The reproduce command (fig3, fig4): the sweep presets fig3/fig4 behind the figures' own flags and plots.

`python -m byzbn.reproduce fig3 ...` is `python -m byzbn.sweep --preset fig3` with the preset's axes
set from --gammas, --seeds (and fig4's --defenses) and its fixed options from the other flags; it
trains on the same engine (byzbn.grid, store in OUT/runs) and writes the docs-style tables and plots
of byzbn.reproduce_report. The parser's defaults are read from the presets, so the two cannot disagree.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Optional

from byzbn.cli.errors import ArgumentError, HelpFormatter, OneLineParser, check, report, run_writing
from byzbn.cli.options import ATTACK_FLAGS, OUTPUT, add_run_options, aggregator_names, pre_aggregator_names
from byzbn.cli.plugins import import_plugins, load_plugins
from byzbn.cli.sweep_config import parse_toml, spec_from_config
from byzbn.grid import engine
from byzbn.grid.presets import preset_text
from byzbn.grid.spec import SweepSpec
from byzbn.grid.table import write_results
from byzbn.reproduce_report import FIG4_FIXED_LABELS, defended_label, write_report
from byzbn.runs.config import csv_items, parse_pre, pre_text
from byzbn.runs.limits import read_json_argument
from byzbn.runs.paths import check_writable_dir
from byzbn.runs.results import atomic_write_text

PROG = "python -m byzbn.reproduce"
DESCRIPTION = """\
fig3  heterogeneity sweep, no Byzantine clients: the schemes centralized, naive, fixbn and fbn at every
      gamma in --gammas (gamma-similarity, the paper's "Modeling heterogeneity": 1 = IID, 0 = extreme
      non-IID); best and final test accuracy against gamma (fig3.png) and the curves (fig3_curves.png).
fig4  sign-flip on the BN means (the Byzantine clients send the opposite of the honest mean), schemes
      naive and fbn, scenarios no attack / no defense / NNM∘median / NNM∘trimmed-mean at every gamma in
      --gammas; accuracy against step (fig4.png: one panel per gamma and scheme).

Both are presets of the sweep engine (python -m byzbn.sweep --preset fig3|fig4) and take every option of
python -m byzbn.attack_eval but those they sweep (--heterogeneity and --seed become --gammas and --seeds,
fig4's --defense becomes --defenses) or fix (fig3 has no Byzantine client, so no attack or defense
options), with the paper's defaults where they differ. --plugin FILE_OR_MODULE (repeatable) is imported
first, so --schemes, --attack, --pre and --defenses take the names it registers.
Each distinct run is trained once (fig4's no-attack and undefended runs serve every defense), seeds
0 .. K-1, into the run store OUT/runs (one directory per run, named by a hash of its configuration);
finished runs are read back, never retrained, and an interrupted reproduction continues from its
checkpoints, so rerunning the same command finishes the job. --jobs K trains K runs at a time.
With K >= 2 seeds, tables give the mean ± its 95 % Student-t interval over seeds and plots shade it.
Writes reproduce.json, summary.json, results.csv, table.md and the PNGs into --out and prints the table.

Every bad argument prints one line to stderr and exits with status 2 before anything is written."""
ABOUT = {"fig3": "heterogeneity sweep without Byzantine clients (the paper's Figure 3)",
         "fig4": "sign-flip on the BN means with and without defenses (the paper's Figure 4)"}
# The run options a figure replaces: --gammas and --seeds sweep --heterogeneity and --seed; fig4's
# --defenses sweeps --defense; fig3 has no Byzantine client.
SWEPT = ("--heterogeneity", "--seed")
SKIPPED = {"fig3": SWEPT + ATTACK_FLAGS, "fig4": SWEPT + ("--defense",)}
# reproduce.json keys that may differ between the invocations of one reproduction.
NOT_COMPARED = ("out", "quiet", "jobs", "runs")
REPORT_EVERY_S = 60.0  # how often a long reproduction redraws its partial tables and plots


def preset_defaults(figure: str) -> dict:
    """The figure's flag defaults, read from its preset: --schemes, --gammas, --seeds, --defenses and the
    preset's fixed options that the figure's parser has (fig4: --attack, --attack-fields, --pre)."""
    preset = parse_toml(preset_text(figure), f"--preset {figure}")
    flags = {f"--{key.replace('_', '-')}": value for key, value in preset.items()
             if not isinstance(value, list) and f"--{key.replace('_', '-')}" not in SKIPPED[figure]}
    gammas = [float(h.partition(":")[2]) for h in preset["heterogeneity"]]
    sweep = {"schemes": ",".join(preset["schemes"]), "gammas": ",".join(f"{g:g}" for g in gammas),
             "seeds": len(preset["seed"])}
    if figure == "fig4":
        sweep["defenses"] = ",".join(preset["defense"])
    return {"flags": flags, "sweep": sweep}


def _add_figure_options(p: argparse.ArgumentParser, figure: str) -> None:
    from byzbn.attacks import ATTACKS
    from byzbn.schemes import SCHEMES

    preset = preset_defaults(figure)
    helps = {"--schemes": f"comma-separated normalization schemes, from {sorted(SCHEMES)} (python -m "
                          "byzbn.attack_eval --help describes them)",
             "--clients": "n: clients in total" + (" (all honest in fig3)" if figure == "fig3" else
                                                  ", Byzantine included"),
             "--quiet": "print only the final table"}
    defaults, choices = {"--schemes": preset["sweep"]["schemes"], **preset["flags"]}, {}
    if figure == "fig4":
        choices["--attack"] = sorted(ATTACKS)  # fig4 is about an attack: no 'none'
        helps.update({
            "--attack": "what the Byzantine clients submit (the paper: sign-flip)",
            "--attack-fields": "which BN statistics the attack replaces (the paper flips the means)",
            "--pre": f"comma-separated pre-aggregators from {pre_aggregator_names()}, applied in order before each "
                     "of --defenses, or none"})
    groups = add_run_options(p, skip=SKIPPED[figure], defaults=defaults, helps=helps, choices=choices)
    sweep = p.add_argument_group("sweep")
    sweep.add_argument("--gammas", default=preset["sweep"]["gammas"],
                       help="comma-separated gamma-similarity levels in [0, 1] (1 = IID, 0 = extreme non-IID)")
    sweep.add_argument("--seeds", type=int, default=preset["sweep"]["seeds"],
                       help="K: run seeds 0 .. K-1; tables and plots give the mean ± its 95 %% interval")
    if figure == "fig4":
        sweep.add_argument("--defenses", default=preset["sweep"]["defenses"],
                           help=f"comma-separated robust rules applied after --pre, from "
                                f"{sorted(set(aggregator_names()) - {'mean'})}")
    sweep.add_argument("--jobs", type=int, default=1, help="runs trained at a time, each in its own process")
    groups[OUTPUT].add_argument("--out", default=None,
                                help=f"output directory, reused by a rerun (default: runs/{figure})")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="figure", metavar="{fig3,fig4}", required=True, parser_class=OneLineParser)
    for figure in ("fig3", "fig4"):
        _add_figure_options(sub.add_parser(figure, help=ABOUT[figure], description=ABOUT[figure],
                                           formatter_class=HelpFormatter), figure)
    return p


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


def figure_spec(args: argparse.Namespace) -> SweepSpec:
    """The figure's preset with its axes and fixed options taken from the parsed flags."""
    check(args.seeds >= 1, f"--seeds={args.seeds} is out of range: valid >= 1")
    check(args.jobs >= 1, f"--jobs={args.jobs} is out of range: valid >= 1")
    where = f"--preset {args.figure}"
    base = spec_from_config(parse_toml(preset_text(args.figure), where), args.figure, where, args.plugin)
    swept = {"seed": tuple(range(args.seeds)),
             "heterogeneity": tuple(f"gamma:{g!r}" for g in parse_gammas(args.gammas)),
             "schemes": tuple(csv_items(args.schemes)) or (args.schemes,)}
    if args.figure == "fig4":
        swept["defense"] = tuple(parse_defenses(args.defenses))
    fixed = {**base.fixed, **{k: v for k, v in vars(args).items() if k in base.fixed and k != "plugin"}}
    return SweepSpec({axis: swept[axis] for axis in base.axes}, fixed, name=args.figure)


def _check_out(out: Path, config: dict) -> None:
    check(not out.exists() or out.is_dir(), f"--out {out} exists and is not a directory")
    check_writable_dir(out, "--out")
    saved = out / "reproduce.json"
    if not saved.is_file():
        return
    old = read_json_argument(saved, f"--out {out}")
    check(old.get("figure") == config["figure"],
          f"--out {out} holds a {old.get('figure')} reproduction, not {config['figure']}: choose another --out")
    diff = sorted(k for k in set(old) | set(config) if k not in NOT_COMPARED and old.get(k) != config.get(k))
    check(not diff, f"--out {out} holds a reproduction made with other arguments (they differ in {diff}): rerun "
                    f"with the same arguments or choose another --out")


def _label(figure: str, cell) -> str:
    if figure == "fig3" or cell.scenario == "no-attack":
        return FIG4_FIXED_LABELS[0]
    if cell.scenario == "attack":
        return FIG4_FIXED_LABELS[1]
    return defended_label(cell.columns["defense"], cell.columns["pre"])


def tagged(figure: str, plan, outcomes: dict) -> tuple[list[dict], list[dict]]:
    """reproduce_report's entries and records: one per (gamma, seed, scheme, label), in the plan's order."""
    entries, records, seen = [], [], set()
    for cell in plan.cells:
        gamma, seed, label = float(cell.columns["heterogeneity"].partition(":")[2]), int(cell.columns["seed"]), \
            _label(figure, cell)
        if (gamma, seed, cell.scheme, label) in seen or cell.key not in outcomes:
            continue
        seen.add((gamma, seed, cell.scheme, label))
        entry, run_records = outcomes[cell.key]
        tag = {"gamma": gamma, "seed": seed, "label": label}
        entries.append({**entry, **tag})
        records += [{**record, **tag} for record in run_records]
    return entries, records


def plan_reproduction(argv: Optional[list[str]] = None):
    """Parse and validate everything (every run through attack_eval's validator) before --out is touched."""
    args = build_parser().parse_args(argv)
    if args.figure == "fig4":  # one spelling in the configs and the labels: 'nnm', 'none', 'nnm,bucketing'
        args.pre = pre_text(parse_pre(args.pre))
    out = Path(args.out) if args.out is not None else Path("runs") / args.figure
    spec = figure_spec(args)
    config = {k: v for k, v in sorted(vars(args).items())}
    config["plugins"] = config.pop("plugin")
    config.update(out=str(out), gammas=parse_gammas(args.gammas), schemes=csv_items(args.schemes))
    _check_out(out, config)
    plan, store = engine.prepare(spec, 1, out / "runs")
    config["runs"] = [str(store.path(key)) for key in plan.runs]
    return args, out, config, plan, store


def main(argv: Optional[list[str]] = None) -> int:
    try:
        load_plugins(argv)
        args, out, config, plan, store = plan_reproduction(argv)
    except ArgumentError as error:
        return report(PROG, error)
    return run_writing(PROG, [out], lambda: _reproduce(args, out, config, plan, store))[0]


def _reproduce(args, out: Path, config: dict, plan, store) -> int:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "reproduce.json", json.dumps(config, indent=2, sort_keys=True) + "\n")

    last_report = [time.perf_counter()]

    def progress(outcomes: dict) -> None:  # partial results while the rest trains; the plots once a minute
        write_results(out / "results.csv", engine.rows_of(plan, store, outcomes))
        if time.perf_counter() - last_report[0] > REPORT_EVERY_S:
            write_report(out, args.figure, config, *tagged(args.figure, plan, outcomes))
            last_report[0] = time.perf_counter()

    setup = functools.partial(import_plugins, args.plugin) if args.plugin else None
    execution = engine.Execution(jobs=args.jobs, setup=setup)
    outcomes, _ = engine.train(plan, store, execution, quiet=args.quiet, on_outcome=progress)
    write_results(out / "results.csv", engine.rows_of(plan, store, outcomes))
    entries, records = tagged(args.figure, plan, outcomes)
    table = write_report(out, args.figure, config, entries, records, wall_s=time.perf_counter() - start)
    print(table, end="")
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
