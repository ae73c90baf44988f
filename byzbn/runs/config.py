"""One validator for every command: parsed run options -> a checked, loaded Plan, before anything is written.

`plan_from_args` takes the namespace of the shared run options (byzbn.cli.options) plus `out`, `resume`
and `quiet`, as attack_eval parses them and reproduce builds them for each of its cells. Every problem
with the arguments is an ArgumentError naming the flag: the explicit range checks, and the ValueErrors
raised while building the attack, defense, schemes, model, dataset and partition from the arguments
(wrapped at those call sites). Nothing else is caught here.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from byzbn.runs.build import (check_statistics_target, dry_build, pre_aggregator_names, resolve_local_steps,
                              runs_attacked, scheme_params, scheme_steps)
from byzbn.runs.dry_call import dry_call
from byzbn.runs.errors import ArgumentError, check, flag_errors, one_line
from byzbn.runs.limits import check_integer_bounds, check_memory, read_json_argument
from byzbn.runs.paths import check_writable_dir
from byzbn.runs.run_config import NOT_COMPARED_ON_RESUME, RunConfig

# The (scheme, its parameters, model, width, data shape) combinations dry_build accepted in this process.
_DRY_BUILT: set = set()


@dataclass
class Plan:
    """Everything validated and loaded before --out is touched."""

    config: RunConfig
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
    unattacked: dict = field(default_factory=dict)  # scheme -> why it has no attack scenarios (sweeps only)


def csv_items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_schemes(text: str) -> list[str]:
    from byzbn.schemes import SCHEMES

    schemes = csv_items(text)
    check(bool(schemes), "--schemes is empty: give a comma-separated list")
    for s in schemes:
        check(s in SCHEMES, f"--schemes: unknown scheme {s!r}: valid schemes are {sorted(SCHEMES)}")
    check(len(set(schemes)) == len(schemes), f"--schemes lists a scheme twice: {text!r}")
    return schemes


def parse_pre(text: Optional[str]) -> Optional[list[str]]:
    """--pre as the ordered pre-aggregator names ([] for none); None when --pre was not given."""
    if text is None:
        return None
    names = csv_items(text)
    if names == ["none"]:
        return []
    valid = pre_aggregator_names()
    check(bool(names), f"--pre is empty: give comma-separated pre-aggregators from {valid}, or none")
    for name in names:
        check(name in valid, f"--pre: unknown pre-aggregator {name!r}: valid are {valid}, or none")
    return names


def default_pre(defense: str) -> list[str]:
    """--pre when not given: NNM before a robust rule (the FBN paper's defenses), nothing before the mean."""
    return [] if defense == "mean" else ["nnm"]


def pre_text(names: list[str]) -> str:
    """config.json's --pre: the names comma-separated, 'none' for no pre-aggregation."""
    return ",".join(names) or "none"


def parse_attack_params(items: list[str], flag: str = "--attack-param") -> dict:
    """{K: V} from K=V items; V a Python literal, else the string itself."""
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        check(bool(sep) and key.isidentifier(),
              f"{flag} {item!r} is malformed: expected K=V with K a parameter name")
        try:
            params[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            params[key] = text.strip()
    return params


def parse_pre_params(items: list[str], pre: list[str]) -> dict:
    """--pre-param NAME.K=V items as {NAME: {K: V}}; NAME must be one of the pre-aggregators in --pre."""
    return parse_named_params(items, pre, "--pre-param", "--pre", "a pre-aggregator")


def parse_named_params(items: list[str], names: list[str], flag: str, of: str, what: str) -> dict:
    """NAME.K=V items as {NAME: {K: V}}; NAME must be one of `names` (the values of option `of`)."""
    params: dict = {}
    for item in items:
        name, dot, rest = item.partition(".")
        name = name.strip()
        check(bool(dot) and bool(name) and "=" in rest,
              f"{flag} {item!r} is malformed: expected NAME.K=V with NAME {what} of {of}")
        check(name in names, f"{flag} {item!r}: {name!r} is not in {of} ({','.join(names) or 'none'})")
        params.setdefault(name, {}).update(parse_attack_params([rest], flag))
    return params


def _check_ranges(args: argparse.Namespace) -> None:
    check_integer_bounds(args)
    n, f = args.clients, args.byzantine
    check(n >= 2, f"--clients={n} is out of range: valid >= 2")
    check(0 <= f and 2 * f < n,
          f"--byzantine={f} is out of range with --clients={n}: valid 0 <= f <= {(n - 1) // 2} (f < n/2)")
    check(args.steps >= 1, f"--steps={args.steps} is out of range: valid >= 1")
    check(args.batch_size >= 2, f"--batch-size={args.batch_size} is out of range: valid >= 2 (BN needs 2 samples)")
    check(math.isfinite(args.lr) and args.lr > 0, f"--lr={args.lr} is out of range: valid finite > 0")
    check(0 <= args.momentum < 1, f"--momentum={args.momentum} is out of range: valid [0, 1)")
    check(math.isfinite(args.width) and args.width > 0, f"--width={args.width} is out of range: valid finite > 0")
    check(math.isfinite(args.fixbn_freeze), f"--fixbn-freeze={args.fixbn_freeze} is out of range: valid finite")
    check(args.eval_every >= 1, f"--eval-every={args.eval_every} is out of range: valid >= 1")
    check(args.checkpoint_every >= 1, f"--checkpoint-every={args.checkpoint_every} is out of range: valid >= 1")
    check(args.seed >= 0, f"--seed={args.seed} is out of range: valid >= 0")
    check(not args.resume or args.out is not None, "--resume needs --out: the directory of the runs to continue")
    check(args.groups >= 1, f"--groups={args.groups} is out of range: valid >= 1")


def _device(name: str) -> torch.device:
    if name == "cuda":
        check(torch.cuda.is_available(), "--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _load_dataset(args: argparse.Namespace):
    """The dataset of --dataset (load_dataset caches it: a sweep's points load it once)."""
    from byzbn.data import load_dataset

    try:
        with flag_errors(f"--dataset {args.dataset}"):
            dataset = load_dataset(args.dataset, data_root=args.data_root, download=args.download)
    except (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise ArgumentError(f"--dataset {args.dataset}: cannot read it ({type(error).__name__}: {error})") from error
    return dataset


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Validate every argument, load the data and check --out; raises ArgumentError for a bad one, writes nothing."""
    plan = validate_run(args)
    _check_out(plan.out, plan.config, args.resume)
    return plan


def validate_run(args: argparse.Namespace, compared: Optional[list[str]] = None) -> Plan:
    """Validate every argument but --out and load the data; writes nothing.

    The sweep validates every point of its grid this way, and stores the runs itself (byzbn.grid.store).
    `compared`: the schemes of the whole comparison when they are more than --schemes (a sweep's scheme
    axis): a scheme the attack cannot target then answers its no-attack cell only, as groupnorm does under
    --target stats in attack_eval, and Plan.unattacked says why (attack_eval refuses such a pair).
    """
    from byzbn.attacks import make_attack, poisons_data
    from byzbn.data import parse_partition, partition
    from byzbn.defenses import make_defense
    from byzbn.fl.scenario import SCENARIOS, TARGETS, incompatibility
    from byzbn.schemes import SCHEMES, make_scheme

    schemes = parse_schemes(args.schemes)
    _check_ranges(args)
    n, f = args.clients, args.byzantine
    with flag_errors("--local-steps"):
        local_steps = resolve_local_steps(args.algorithm, args.local_steps, args.reset_client_momentum, args.steps)
    device = _device(args.device)

    params = parse_attack_params(args.attack_param)
    if args.attack == "none":
        check(not params, "--attack-param given with --attack none")
        attack = None
    else:
        with flag_errors(f"--attack {args.attack}"):
            attack = make_attack(args.attack, **params)
    pre = parse_pre(args.pre)
    pre = default_pre(args.defense) if pre is None else pre
    defense_params = parse_attack_params(args.defense_param, "--defense-param")
    pre_params = parse_pre_params(args.pre_param, pre)
    with flag_errors(f"--defense {args.defense} (--pre {pre_text(pre)})"):
        defense = make_defense(args.defense, f, pre=[(p, pre_params.get(p, {})) for p in pre] or None,
                               **defense_params)
        defense.check_n(n)
    participation = getattr(args, "participation", 1.0)
    check(math.isfinite(participation) and 0 < participation <= 1,
          f"--participation={participation} is out of range: valid (0, 1]")
    if participation < 1:
        from byzbn.fl.participation import largest_fitting_f, sample_size

        k = sample_size(n, participation)
        with flag_errors(f"--participation {participation} samples {k} of --clients={n}: --defense {args.defense} "
                         f"(--pre {pre_text(pre)})"):
            largest_fitting_f(defense, f, k)
    with flag_errors("--heterogeneity"):
        parse_partition(args.heterogeneity)
    out = Path(args.out) if args.out is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    # A sweep's cell runs one scheme of its scheme axis (`compared`): it keeps that scheme's parameters only.
    scheme_params_given = parse_named_params(getattr(args, "scheme_param", []), compared or schemes,
                                             "--scheme-param", "--schemes", "a scheme")
    scheme_params_given = {s: p for s, p in scheme_params_given.items() if s in schemes}
    resolved = run_config_of(args, local_steps=local_steps, pre=pre_text(pre), schemes=schemes,
                             attack_params=params, defense_params=defense_params, pre_params=pre_params,
                             scheme_params=scheme_params_given, device=str(device), honest=n - f,
                             samples_per_client=0, out=str(out))
    for s in schemes:
        with flag_errors(f"--schemes {s}"):
            make_scheme(s, scheme_steps(s, resolved), **scheme_params(s, resolved))
    with flag_errors("--target"):
        check_statistics_target(compared or schemes, attack is not None, args.target)
    dry_call(attack, defense, n, f, TARGETS[args.target], f"--defense {args.defense} (--pre {pre_text(pre)})",
             f"--attack {args.attack}")

    dataset = _load_dataset(args)
    check_memory(args, dataset)  # before any model is built at this --width
    for s in schemes:  # e.g. --groups must divide every layer's channels at this --width
        built = (s, repr(scheme_params(s, resolved)), scheme_steps(s, resolved), getattr(args, "model", None),
                 args.width, dataset.input_shape, dataset.num_classes)
        if built in _DRY_BUILT:  # a sweep's points share their models: each one is built once
            continue
        with flag_errors(f"--schemes {s} at --width {args.width}"):
            dry_build(s, resolved, dataset)
        _DRY_BUILT.add(built)
    h = n - f
    # Data-poisoning Byzantine clients (label-flip) hold a share like the honest clients: n shares, the
    # honest clients' first, so every scenario of the run trains the honest clients on the same data.
    holders, who = (n, "clients (the Byzantine ones hold data under this attack)") if poisons_data(attack) \
        else (h, "honest clients")
    unattacked = {}
    for s in schemes:
        reason = incompatibility(SCHEMES[s], attack, TARGETS[args.target]) if SCHEMES[s].attackable else None
        check(reason is None or compared is not None, f"--attack {args.attack} --schemes {s}: {reason}")
        if reason is not None:
            unattacked[s] = f"--attack {args.attack} --target {args.target} --schemes {s}: {reason}"
    with flag_errors(f"--heterogeneity {args.heterogeneity} with {holders} {who}"):
        client_indices = torch.stack(partition(dataset.y_train, holders, args.heterogeneity, args.seed))
    check(args.batch_size <= client_indices.shape[1],
          f"--batch-size={args.batch_size} is out of range: each of the {holders} {who} holds "
          f"{client_indices.shape[1]} samples")

    scenarios = list(SCENARIOS) if attack is not None else ["no-attack"]
    runs = [(s, sc) for s in schemes for sc in scenarios
            if sc == "no-attack" or (runs_attacked(s, args.target) and s not in unattacked)]
    config = resolved.with_changes(samples_per_client=int(client_indices.shape[1]))
    return Plan(config, out, dataset, client_indices, device, attack, defense, runs, schemes, scenarios,
                quiet=args.quiet, resume=args.resume, unattacked=unattacked)


def run_config_of(args: argparse.Namespace, **resolved) -> RunConfig:
    """The RunConfig of the parsed options, with what the validator resolved (`resolved`: parsed *_param
    lists as *_params, local_steps, the device, ...) in place of the raw values."""
    options = dict(vars(args))
    options["plugins"] = list(options.pop("plugin", []))
    for flag_list in ("attack_param", "defense_param", "pre_param", "scheme_param"):  # recorded parsed
        options.pop(flag_list, None)
    options.update(resolved)
    try:  # what config.json will hold (tuples become lists), so that --resume compares like with like
        options = json.loads(json.dumps(options))
    except (TypeError, ValueError) as error:
        raise ArgumentError(f"--attack-param, --defense-param, --pre-param and --scheme-param values must be "
                            f"numbers, strings, booleans or None ({error})") from error
    try:
        return RunConfig.from_json(options)
    except ValueError as error:
        raise ArgumentError(one_line(error)) from error


def _check_out(out: Path, config: RunConfig, resume: bool) -> None:
    if resume:
        saved = out / "config.json"
        check(saved.is_file(), f"--resume: {saved} does not exist (nothing to resume)")
        old = read_json_argument(saved, "--resume")
        try:
            old = RunConfig.from_json(old)
        except (ValueError, TypeError, AttributeError) as error:
            raise ArgumentError(f"--resume: {saved} is not a run configuration ({one_line(error)})") from error
        diff = config.differences(old)
        check(not diff, f"--resume: arguments differ from {saved} in {diff}")
    else:
        check(not out.exists() or (out.is_dir() and not any(out.iterdir())),
              f"--out {out} already exists: pass --resume to continue it, or choose another directory")
    check_writable_dir(out, "--out")


__all__ = ["Plan", "NOT_COMPARED_ON_RESUME", "csv_items", "parse_schemes", "parse_pre", "default_pre", "pre_text",
           "parse_attack_params", "parse_pre_params", "parse_named_params", "run_config_of", "plan_from_args",
           "validate_run"]
