"""The sweep command: `python -m byzbn.sweep CONFIG.toml --out DIR` (or --preset NAME), on byzbn.grid."""
from __future__ import annotations

import csv
import functools
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from byzbn.cli.errors import ArgumentError, HelpFormatter, OneLineParser, check, report, run_writing
from byzbn.cli.plugins import FLAG as PLUGIN_FLAG
from byzbn.cli.plugins import HELP as PLUGIN_HELP
from byzbn.cli.plugins import METAVAR as PLUGIN_METAVAR
from byzbn.cli.plugins import import_plugins
from byzbn.cli.sweep_config import apply_sets, parse_toml, plugins_of, read_config, set_keys, spec_from_config
from byzbn.grid import engine
from byzbn.grid.backends import BACKENDS, default_jobs
from byzbn.grid.counting import dry_run_count
from byzbn.grid.presets import preset_names, preset_text
from byzbn.grid.report import write_docs_page
from byzbn.grid.table import write_results
from byzbn.runs.errors import one_line
from byzbn.runs.limits import read_json_argument
from byzbn.runs.paths import check_writable_dir

PROG = "python -m byzbn.sweep"
DESCRIPTION = """\
A grid of attack_eval runs in one command: every combination of the config's swept options, each
scheme in the scenarios no-attack, attack and attack+defense (attack_eval --help describes them).

The config is TOML whose keys are attack_eval's long option names (dashed or underscored); a list is a
grid axis (the first varies slowest), a scalar is fixed, and every other option keeps attack_eval's
default. Example (2 schemes x 2 attacks x 2 defenses x 2 values of f = 16 points, x 3 scenarios = 48
scenario cells, answered by 28 distinct runs):

    schemes = ["naive", "fbn"]
    attack = ["sign-flip", "alie"]
    defense = ["median", "trimmed-mean"]
    byzantine = [1, 2]

Each distinct run is trained once: the no-attack scenario does not depend on the attack or the defense,
the undefended attack not on the defense. Runs live in the store (--store, default OUT/runs), one
directory per run named by a hash of its configuration, the content of its data file and plugins, and
the byzbn version: finished runs are read back, never retrained (a result that fails its checksum is
reported and trained again), and a killed sweep rerun with the same command resumes each run from its
checkpoint to the same results. Sweeps sharing a store split its runs (a lock per run). Ctrl-C or
SIGTERM stops the workers, keeping the finished runs. On CPU the results do not depend on --jobs or
--backend (every run trains on --threads intra-op threads).

Writes to --out: results.csv (one row per scenario cell), heatmap.png and breakdown.png (worst case
over attacks per scheme x defense, against f and heterogeneity), table.md, report.md and sweep.json.
Every number is a mean over the grid's seeds with its 95 % Student-t interval; a diverged run counts as
chance accuracy in a worst case. Without Byzantine clients (f = 0) the undefended attack cells are the
no-attack run. --redraw regenerates every output (and --docs) from results.csv and sweep.json alone.
Every bad argument or config value prints one line to stderr and exits with status 2, writing nothing."""


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("config", nargs="?", help="the sweep config (TOML); or use --preset")
    grid = p.add_argument_group("grid")
    grid.add_argument("--preset", choices=preset_names(),
                      help="a config shipped with byzbn (fig3, fig4: the FBN paper's figures; breakdown, heatmap)")
    grid.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override one config key (repeatable); VALUE is TOML: --set byzantine=[1,2] --set "
                           "steps=50 --set attack=alie")
    grid.add_argument("--dry-run", action="store_true",
                      help="print the plan (cells, distinct runs, what the store already holds) and exit")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", default=None, help="output directory (default: runs/sweep-<config or preset name>)")
    out.add_argument("--store", default=None, help="the run store, shareable between sweeps (default: OUT/runs)")
    out.add_argument("--tolerance", type=float, default=0.1,
                     help="breakdown point: the upper end of the 95 %% interval of the paired drop from no-attack to the "
                          "worst case may reach this much accuracy")
    out.add_argument("--docs", default=None, metavar="PAGE",
                     help="also write the report as a docs page (its images in PAGE's folder, e.g. docs/sweep/)")
    out.add_argument("--redraw", action="store_true",
                     help="redraw the finished sweep in --out (figures, table.md, report.md and --docs) from its "
                          "results.csv and sweep.json, training nothing (e.g. with another --tolerance)")
    out.add_argument("--quiet", action="store_true", help="no progress bar; print only the outputs' location")
    run = p.add_argument_group("execution")
    run.add_argument("--backend", default="local", choices=list(BACKENDS),
                     help="local: worker processes on this machine; ray: Ray tasks (pip install 'byzbn[sweep]')")
    run.add_argument("--jobs", type=int, default=None,
                     help="runs at a time (default: the cores / --threads on CPU, 1 on a GPU); with ray and no "
                          "--ray-address, the local Ray cluster's size")
    run.add_argument("--threads", type=int, default=1,
                     help="intra-op threads per run on CPU (part of a run's identity: the numbers depend on it)")
    run.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: start a local one")
    p.add_argument(PLUGIN_FLAG, action="append", default=[], metavar=PLUGIN_METAVAR, help=PLUGIN_HELP)
    return p


def _config(args) -> tuple[dict, str, str]:
    """(config, name, where) from CONFIG or --preset, with --set applied."""
    check(args.config is None or args.preset is None, "give a config file or --preset, not both")
    check(args.config is not None or args.preset is not None, "give a config file (TOML) or --preset NAME")
    if args.preset is not None:
        name, where = args.preset, f"--preset {args.preset}"
        config = parse_toml(preset_text(args.preset), where)
    else:
        name, where = Path(args.config).stem, args.config
        config = read_config(args.config)
    return apply_sets(config, args.set), name, where


def _check_args(args) -> None:
    check(args.jobs is None or args.jobs >= 1, f"--jobs={args.jobs} is out of range: valid >= 1")
    check(args.threads >= 1, f"--threads={args.threads} is out of range: valid >= 1")
    check(0 <= args.tolerance <= 1, f"--tolerance={args.tolerance} is out of range: valid [0, 1] (accuracy)")
    check(args.ray_address is None or args.backend == "ray", "--ray-address needs --backend ray")
    if args.backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as error:
            raise ArgumentError("--backend ray needs Ray: pip install 'byzbn[sweep]'") from error


def _check_out(out: Path, store: Optional[Path], writing: bool) -> None:
    check(not out.exists() or out.is_dir(), f"--out {out} exists and is not a directory")
    if writing:  # --out and --store can be made and written, before either is created
        check_writable_dir(out, "--out")
        if store is not None:
            check_writable_dir(store, "--store")
    if out.is_dir() and any(out.iterdir()):
        check((out / engine.RECORD).is_file() or (out / "runs").is_dir(),
              f"--out {out} holds files but no sweep ({engine.RECORD}): choose another directory")


def _redraw(args) -> int:
    """--redraw: the outputs of the finished sweep in --out again, from results.csv and sweep.json."""
    check(args.config is None and args.preset is None and not args.set and not args.dry_run,
          "--redraw reads the finished sweep in --out: give no config, --preset, --set or --dry-run")
    check(args.out is not None, "--redraw needs --out: the directory of a finished sweep")
    out = Path(args.out)
    check((out / "results.csv").is_file() and (out / engine.RECORD).is_file(),
          f"--out {out} holds no finished sweep (results.csv and {engine.RECORD})")
    record = read_json_argument(out / engine.RECORD, "--redraw")
    try:
        rows = engine.redraw(out, record, args.tolerance)
    except (ValueError, KeyError, TypeError, csv.Error) as error:
        raise ArgumentError(f"--redraw: {out} holds a damaged sweep (results.csv or {engine.RECORD}: "
                            f"{type(error).__name__}: {one_line(error)})") from error
    if args.docs:
        write_docs_page(Path(args.docs), out, rows, record, args.tolerance)
    print(f"redrew {out}" + (f" and {args.docs}" if args.docs else ""))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    start = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        _check_args(args)
        if args.redraw:
            return _redraw(args)
        config, name, where = _config(args)
        plugins = args.plugin + plugins_of(config, where)
        import_plugins(plugins)
        spec = spec_from_config(config, name, where, plugins, from_set=set_keys(args.set))
        out = Path(args.out) if args.out is not None else Path("runs") / f"sweep-{name}"
        _check_out(out, Path(args.store) if args.store else None, writing=not args.dry_run)
        if args.docs and not args.dry_run:
            check_writable_dir(Path(args.docs).parent, "--docs")
        if args.dry_run:
            print(dry_run_count(spec, args.threads, Path(args.store) if args.store else out / "runs"), end="")
            return 0
        plan, store = engine.prepare(spec, args.threads, Path(args.store) if args.store else out / "runs")
    except ArgumentError as error:
        return report(PROG, error)
    jobs = args.jobs or default_jobs(args.threads, on_gpu="cuda" in plan.devices)
    execution = engine.Execution(args.backend, jobs, args.threads, args.ray_address,
                                 functools.partial(import_plugins, plugins) if plugins else None)

    def partial(outcomes: dict) -> None:  # results.csv so far, rewritten as each run finishes
        write_results(out / "results.csv", engine.rows_of(plan, store, outcomes))

    def work() -> tuple[dict, int]:
        out.mkdir(parents=True, exist_ok=True)
        outcomes, trained = engine.train(plan, store, execution, quiet=args.quiet, on_outcome=partial)
        command = " ".join(shlex.quote(a) for a in [*PROG.split(), *argv])
        record = engine.record_of(plan, store, outcomes, execution, trained, command, time.perf_counter() - start)
        rows = engine.write_outputs(out, plan, store, outcomes, record, args.tolerance)
        if args.docs:
            write_docs_page(Path(args.docs), out, rows, record, args.tolerance)
        return record, trained

    code, done = run_writing(PROG, [out, store.root], work)
    if code:
        return code
    record, trained = done
    if not args.quiet:
        print((out / "table.md").read_text(encoding="utf-8"), end="")
    c = record["counts"]
    print(f"{c['cells']} scenario cells, {c['runs']} distinct runs ({trained} trained, {c['read_back']} read back) "
          f"in {record['wall_s']:.1f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
