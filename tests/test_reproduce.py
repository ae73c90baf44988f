"""python -m byzbn.reproduce: both figures end to end, mean ± 95 % interval over seeds, reuse of finished runs, errors.

The figures are presets of the sweep engine (byzbn.grid): their runs live in the store OUT/runs, one
directory per distinct run (config.json: its identity; result.json once finished). Every reproduction
here trains on a tiny synthetic npz (8x8 grayscale, 10 classes) with a narrow CNN for 3 steps, so a whole
figure takes a few seconds on one thread.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from byzbn.reproduce import build_parser, main
from byzbn.runs import execute as runner

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIG3_SCHEMES = ("centralized", "naive", "fixbn", "fbn")
FIG4_LABELS = ("no attack", "no defense", "nnm∘median", "nnm∘trimmed-mean")



def fig3_args(npz: Path, out: Path, *extra: str) -> list[str]:
    return ["fig3", "--dataset", f"npz:{npz}", "--out", str(out), "--clients", "4", "--width", "0.125",
            "--batch-size", "4", "--steps", "3", "--eval-every", "1", "--lr", "0.1", "--gammas", "1,0",
            "--quiet", "--seeds", "1", *extra]  # one seed unless a test asks for more (the presets run three)


def fig4_args(npz: Path, out: Path, *extra: str) -> list[str]:
    return ["fig4", "--dataset", f"npz:{npz}", "--out", str(out), "--clients", "5", "--byzantine", "1",
            "--width", "0.125", "--batch-size", "4", "--steps", "3", "--eval-every", "1", "--lr", "0.1",
            "--quiet", "--seeds", "1", *extra]


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(root: Path) -> dict:
    """Every file's bytes and modification time: what a run that trains nothing must leave untouched."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def store_runs(out: Path) -> dict:
    """{run directory: (identity, summary entry or None)} of every run in the reproduction's store."""
    runs = {}
    for config in sorted((out / "runs").glob("*/config.json")):
        result = config.parent / "result.json"
        entry = json.loads(result.read_text())["summary"] if result.is_file() else None
        runs[config.parent] = (json.loads(config.read_text())["run"], entry)
    return runs


def find_runs(out: Path, **where) -> dict:
    """The store's runs whose identity has every key = value of `where`."""
    return {d: run for d, run in store_runs(out).items() if all(run[0].get(k) == v for k, v in where.items())}


def results_rows(out: Path) -> list[dict]:
    import csv

    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def fig3_outputs_are_complete(out: Path) -> None:
    for name in ("reproduce.json", "summary.json", "results.csv", "table.md", "fig3.png", "fig3_curves.png"):
        assert (out / name).is_file(), name
    for name in ("fig3.png", "fig3_curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) < 150_000


def test_fig3_with_two_seeds_gives_mean_and_sample_std_of_the_runs(tiny_npz, tmp_path, capsys):
    out = tmp_path / "fig3"
    code, stdout, stderr = run(fig3_args(tiny_npz, out, "--seeds", "2"), capsys)
    assert code == 0, stderr
    fig3_outputs_are_complete(out)
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["gamma"], r["scheme"]): r for r in summary["aggregate"]}
    assert set(rows) == {(g, s) for g in (1.0, 0.0) for s in FIG3_SCHEMES}
    table = (out / "table.md").read_text()
    assert table.split("\n", 2)[2] in stdout  # the printed table is table.md's
    rows_csv = results_rows(out)
    assert len(rows_csv) == 2 * 2 * len(FIG3_SCHEMES)  # gamma x seed x scheme, no-attack only
    for gamma in (1.0, 0.0):
        for s in (0, 1):
            cells = [r for r in rows_csv if r["heterogeneity"] == f"gamma:{gamma!r}" and r["seed"] == str(s)]
            assert len(cells) == len(FIG3_SCHEMES)
            assert all(r["byzantine"] == "0" and r["attack"] == "none" and r["scenario"] == "no-attack"
                       for r in cells)
        per_seed = [{run[0]["scheme"]: run for run in find_runs(out, heterogeneity=f"gamma:{gamma!r}",
                                                                 seed=s).values()} for s in (0, 1)]
        for s, runs in enumerate(per_seed):
            assert set(runs) == set(FIG3_SCHEMES)
            for identity, _ in runs.values():
                assert identity["seed"] == s and identity["byzantine"] == 0 and "attack" not in identity
                assert identity["heterogeneity"] == f"gamma:{gamma!r}"
        for scheme in FIG3_SCHEMES:
            finals = [runs[scheme][1]["final_acc"] for runs in per_seed]
            bests = [runs[scheme][1]["best_acc"] for runs in per_seed]
            row = rows[(gamma, scheme)]
            assert row["seeds"] == [0, 1] and row["label"] == "no attack"
            assert row["final_mean"] == pytest.approx((finals[0] + finals[1]) / 2)
            assert row["final_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)  # ddof = 1
            assert row["best_mean"] == pytest.approx(statistics.fmean(bests))
            assert row["best_std"] == pytest.approx(statistics.stdev(bests))
            line = next(line for line in table.splitlines() if line.startswith(f"| {scheme} |"))
            half = 12.7062047 * statistics.stdev(finals) / 2 ** 0.5  # the 95 % Student-t interval over 2 seeds
            assert f"{100 * statistics.fmean(finals):.1f} ± {100 * half:.1f} / " in line
    assert "γ = 1 (IID)" in table and "γ = 0 (extreme non-IID)" in table


def test_one_seed_gives_no_std(tiny_npz, tmp_path, capsys):
    out = tmp_path / "fig3"
    code, _, stderr = run(fig3_args(tiny_npz, out, "--gammas", "0.5", "--schemes", "naive,fbn"), capsys)
    assert code == 0, stderr
    rows = json.loads((out / "summary.json").read_text())["aggregate"]
    assert len(rows) == 2 and all(r["final_std"] is None and r["seeds"] == [0] for r in rows)
    assert "±" not in (out / "table.md").read_text()


def test_fig4_trains_each_distinct_run_once(tiny_npz, tmp_path, capsys):
    out = tmp_path / "fig4"
    code, stdout, stderr = run(fig4_args(tiny_npz, out), capsys)
    assert code == 0, stderr
    data = (out / "fig4.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) < 150_000
    assert len(store_runs(out)) == 16  # per gamma and scheme: no-attack, attack, and one run per defense
    for gamma in ("0.5", "0"):
        het = f"gamma:{float(gamma)!r}"
        for scheme in ("naive", "fbn"):
            runs = find_runs(out, heterogeneity=het, scheme=scheme)
            scenarios = sorted(identity["scenario"] for identity, _ in runs.values())
            assert scenarios == ["attack", "attack+defense", "attack+defense", "no-attack"]
            assert sorted(i.get("defense") for i, _ in runs.values() if i["scenario"] == "attack+defense") == \
                ["median", "trimmed-mean"]
            assert all("defense" not in i for i, _ in runs.values() if i["scenario"] != "attack+defense")
        (identity, _), = find_runs(out, heterogeneity=het, scheme="fbn", defense="trimmed-mean").values()
        assert (identity["attack"], identity["target"], identity["attack_fields"], identity["pre"],
                identity["defense"]) == ("sign-flip", "stats", "mean", "nnm", "trimmed-mean")
        assert identity["heterogeneity"] == f"gamma:{float(gamma)!r}"
    summary = json.loads((out / "summary.json").read_text())
    labels = {(r["gamma"], r["scheme"], r["label"]) for r in summary["aggregate"]}
    assert labels == {(g, s, label) for g in (0.5, 0.0) for s in ("naive", "fbn") for label in FIG4_LABELS}
    assert len(summary["runs"]) == 16
    table = (out / "table.md").read_text()
    assert "| scheme | " + " | ".join(FIG4_LABELS) + " |" in table and "γ = 0.5" in table and "γ = 0 (" in table
    assert "sign-flip on the BN mean" in stdout
    # results.csv has every scenario cell: 2 gammas x 2 defenses x 2 schemes x 3 scenarios.
    assert len(results_rows(out)) == 24


def test_a_second_invocation_trains_nothing_and_prints_the_same_table(tiny_npz, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fig3"
    code, first, _ = run(fig3_args(tiny_npz, out), capsys)
    assert code == 0
    stored = files_under(out / "runs")
    assert len(stored) >= 8 * 3  # 8 runs: config.json, result.json, metrics.jsonl, a checkpoint each

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "run_plan", no_training)
    monkeypatch.setattr(runner, "run_one", no_training)
    code, second, stderr = run(fig3_args(tiny_npz, out), capsys)
    assert code == 0, stderr
    assert second == first
    assert files_under(out / "runs") == stored


def test_an_interrupted_reproduction_continues_where_it_stopped(tiny_npz, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert run(fig3_args(tiny_npz, reference), capsys)[0] == 0
    out = tmp_path / "interrupted"
    real_run_one, calls = runner.run_one, []

    def interrupt_at_the_sixth_run(*args, **kwargs):  # gamma 0's second run: its first run has finished
        calls.append(args[1:3])
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_run_one(*args, **kwargs)

    monkeypatch.setattr(runner, "run_one", interrupt_at_the_sixth_run)
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line, exit status 130, the finished runs stored
        main(fig3_args(tiny_npz, out))
    assert stopped.value.code == 130 and capsys.readouterr().err.startswith("interrupted (SIGINT): ")
    first_gamma = find_runs(out, heterogeneity="gamma:1.0")
    assert len(first_gamma) == 4 and all(entry is not None for _, entry in first_gamma.values())
    second_gamma = find_runs(out, heterogeneity="gamma:0.0")
    finished = {d for d, (_, entry) in second_gamma.items() if entry is not None}
    unfinished = set(second_gamma) - finished
    assert [second_gamma[d][0]["scheme"] for d in finished] == ["centralized"] and len(unfinished) == 3
    assert all((d / "config.json").is_file() and not (d / "result.json").exists() for d in unfinished)
    first_runs = {d: files_under(d) for d in first_gamma}
    checkpoint = next(iter(finished)) / "checkpoints" / "centralized__no-attack.pt"
    finished_state = (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns)

    plans = []
    monkeypatch.setattr(runner, "run_one", lambda plan, *a: plans.append(plan) or real_run_one(plan, *a))
    code, _, stderr = run(fig3_args(tiny_npz, out), capsys)
    assert code == 0, stderr
    assert {p.out for p in plans} == unfinished and len(plans) == 3 and all(p.resume for p in plans)
    assert {d: files_under(d) for d in first_gamma} == first_runs
    assert (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns) == finished_state
    accuracy = lambda d: [(r["gamma"], r["scheme"], r["final_acc"], r["best_acc"])  # noqa: E731
                          for r in json.loads((d / "summary.json").read_text())["runs"]]
    assert accuracy(out) == accuracy(reference)


def test_a_rerun_with_other_arguments_is_refused(tiny_npz, tmp_path, capsys):
    out = tmp_path / "fig3"
    assert run(fig3_args(tiny_npz, out, "--gammas", "0"), capsys)[0] == 0
    before = files_under(out)
    code, stdout, stderr = run(fig3_args(tiny_npz, out, "--gammas", "0", "--lr", "0.2"), capsys)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1
    assert "other arguments" in stderr and "'lr'" in stderr
    code, _, stderr = run(fig4_args(tiny_npz, out), capsys)
    assert code == 2 and stderr.count("\n") == 1 and "holds a fig3 reproduction" in stderr
    assert files_under(out) == before


BAD_ARGUMENTS = [
    ([], "the following arguments are required"),
    (["fig5"], "invalid choice: 'fig5'"),
    (["fig3", "--gammas", "2"], "--gammas: 2 is out of range"),
    (["fig3", "--gammas", "half"], "'half' is not a number"),
    (["fig3", "--gammas", ","], "--gammas is empty"),
    (["fig3", "--gammas", "1,1.0"], "lists a gamma twice"),
    (["fig3", "--seeds", "0"], "--seeds=0 is out of range"),
    (["fig3", "--steps", "0"], "--steps=0 is out of range"),
    (["fig3", "--width", "nan"], "--width=nan is out of range"),
    (["fig3", "--schemes", "batch"], "unknown scheme 'batch'"),
    (["fig3", "--byzantine", "1"], "unrecognized arguments: --byzantine"),
    (["fig3", "--dataset", "npz:/nonexistent/file.npz"], "dataset file not found"),
    (["fig4", "--clients", "4", "--byzantine", "2"], "--byzantine=2 is out of range"),
    (["fig4", "--defenses", "mean"], "unknown robust rule 'mean'"),
    (["fig4", "--defenses", ""], "--defenses is empty"),
    (["fig4", "--attack", "nope"], "invalid choice: 'nope'"),
    (["fig4", "--attack", "none"], "invalid choice: 'none'"),
    (["fig4", "--pre", "nope"], "--pre: unknown pre-aggregator 'nope'"),
    (["fig4", "--target", "everything"], "invalid choice: 'everything'"),
    (["fig4", "--attack", "alie", "--attack-param", "zz=1"], "unknown parameter(s) ['zz']"),
    (["fig4", "--algorithm", "fedavg", "--local-steps", "2"], "--steps=3 is not a multiple of --local-steps=2"),
    (["fig3", "--attack", "alie"], "unrecognized arguments: --attack"),
    (["fig3", "--seed", "1"], "unrecognized arguments: --seed"),
    (["fig3", "--plugin", "/nonexistent/rules.py"], "--plugin /nonexistent/rules.py: no such file"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGUMENTS)
def test_a_bad_argument_prints_one_line_exits_2_and_writes_nothing(tiny_npz, tmp_path, monkeypatch, capsys,
                                                                   argv, message):
    monkeypatch.chdir(tmp_path)
    base = {"fig3": fig3_args, "fig4": fig4_args}
    full = base[argv[0]](tiny_npz, tmp_path / "out")[1:] if argv and argv[0] in base else []
    # Later flags win in argparse: the bad one comes after the tiny defaults.
    code, stdout, stderr = run(argv[:1] + full + argv[1:], capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert stdout == "" and os.listdir(tmp_path) == []


def test_the_entry_point_exits_2_with_one_stderr_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "byzbn.reproduce", "fig4", "--gammas", "0.5,-1", "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--gammas: -1 is out of range" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag():
    parser = build_parser()
    for figure in ("fig3", "fig4"):
        sub = parser._subparsers._group_actions[0].choices[figure]
        for action in sub._actions:
            assert action.help, action.option_strings
        text = sub.format_help()
        for flag in ("--gammas", "--seeds", "--dataset", "--data-root", "--steps", "--device", "--out", "--width",
                     "--algorithm", "--plugin"):
            assert flag in text
    assert "--defenses" in parser._subparsers._group_actions[0].choices["fig4"].format_help()


def test_aggregate_and_curves_of_hand_made_runs():
    from byzbn.reproduce_report import aggregate, curves, format_tables

    def entry(seed, final, best, status="ok"):
        return {"gamma": 0.0, "scheme": "fbn", "label": "no defense", "seed": seed, "final_acc": final,
                "best_acc": best, "status": status, "wall_s": 1.5}

    rows = aggregate([entry(0, 0.2, 0.5), entry(1, 0.4, 0.7, status="diverged: non-finite parameters"),
                      entry(2, 0.3, 0.6)])
    assert len(rows) == 1
    row = rows[0]
    assert row["seeds"] == [0, 1, 2] and row["diverged"] == 1 and row["wall_s"] == 4.5
    # the diverged seed is counted, not averaged: the mean of seeds 0 and 2, t(0.975, 1) · std / √2
    assert row["final_mean"] == pytest.approx(0.25) and row["final_std"] == pytest.approx(0.05 * 2 ** 0.5)
    assert row["best_mean"] == pytest.approx(0.55) and row["final_half"] == pytest.approx(12.7062047 * 0.05)
    config = {"seeds": 3, "clients": 5, "byzantine": 1, "attack": "sign-flip", "attack_fields": "mean",
              "dataset": "digits", "steps": 3, "width": 0.125, "batch_size": 4, "gammas": [0.0],
              "schemes": ["fbn"], "defenses": "median", "pre": "nnm", "target": "stats"}
    table = format_tables("fig4", config, rows)
    assert "| fbn | – | 25.0 ± 63.5 / 55.0 ± 63.5 (1/3 diverged) | – |" in table

    # A diverged run stops early: later steps average the seeds that reached them.
    records = [{"gamma": 0.0, "scheme": "fbn", "label": "no attack", "step": step, "test_acc": acc}
               for step, acc in ((0, 0.1), (5, 0.3), (0, 0.1), (5, 0.5), (10, 0.6))]
    steps, mean, std = curves(records)[(0.0, "fbn", "no attack")]
    assert steps == [0, 5, 10]
    assert mean == pytest.approx([0.1, 0.4, 0.6])
    assert std == pytest.approx([0.0, 12.7062047 * 0.1, 0.0])  # 95 % half-width: t(0.975, 1) · std / √2


def test_a_run_killed_before_its_config_was_written_is_started_afresh(tiny_npz, tmp_path, capsys):
    args = ("--gammas", "0", "--schemes", "fbn")
    reference = tmp_path / "reference"
    assert run(fig3_args(tiny_npz, reference, *args), capsys)[0] == 0
    (key,) = [d.name for d in store_runs(reference)]
    out = tmp_path / "fig3"
    (out / "runs" / key / "checkpoints").mkdir(parents=True)  # the store's first mkdir, nothing more
    code, _, stderr = run(fig3_args(tiny_npz, out, *args), capsys)
    assert code == 0, stderr
    assert (out / "runs" / key / "result.json").is_file()
    (identity, entry), (ref_identity, ref_entry) = store_runs(out)[out / "runs" / key], \
        store_runs(reference)[reference / "runs" / key]
    assert identity == ref_identity and (entry["final_acc"], entry["best_acc"]) == \
        (ref_entry["final_acc"], ref_entry["best_acc"])
    stray = tmp_path / "stray"
    (stray / "runs" / key).mkdir(parents=True)
    (stray / "runs" / key / "notes.txt").write_text("not a run")
    code, _, stderr = run(fig3_args(tiny_npz, stray, *args), capsys)
    assert code == 2 and stderr.count("\n") == 1 and "without config.json" in stderr


def former_cells(figure: str, args: dict) -> list[dict]:
    """The run options of every cell of the former reproduce (before it became a sweep preset), as it built
    them: attack_eval's defaults, the figure's flags, then per gamma/seed(/defense) the swept options."""
    from byzbn.cli.options import run_defaults

    shared = {**run_defaults(), **args}
    shared.pop("quiet")
    if figure == "fig3":
        variants = [dict(byzantine=0, attack="none", defense="mean")]
    else:
        variants = [dict(defense=d) for d in args.pop("defenses")]
        shared.pop("defenses")
    return [{**shared, **extra, "heterogeneity": f"gamma:{g!r}", "seed": seed}
            for seed in range(args["seeds"]) for g in args["gammas"] for extra in variants]


@pytest.mark.parametrize("figure", ["fig3", "fig4"])
def test_the_presets_are_the_former_reproduce_cells(figure):
    from byzbn.cli.reproduce import figure_spec

    args = build_parser().parse_args([figure])
    spec = figure_spec(args)
    # the former cells at the presets' three seeds
    former = {"fig3": dict(schemes="centralized,naive,fixbn,fbn", gammas=[1.0, 0.5, 0.2, 0.0], seeds=3),
              "fig4": dict(schemes="naive,fbn", gammas=[0.5, 0.0], seeds=3, attack_fields="mean", pre="nnm",
                           defenses=["median", "trimmed-mean"])}[figure]
    cells = former_cells(figure, {**former})
    for cell in cells:
        cell.pop("schemes"), cell.pop("gammas"), cell.pop("seeds")
    points = []
    for _, options in spec.points():  # the sweep has one point per scheme: group them back into cells
        options = dict(options)
        scheme = options.pop("schemes")
        if scheme == former["schemes"].split(",")[0]:
            points.append(options)
    assert points == cells
    assert {o["schemes"] for _, o in spec.points()} == set(former["schemes"].split(","))
