"""The Flower experiment: attack_eval's options (byzbn.cli's shared parser and byzbn.runs' validator) plus Flower's.

One parser serves both ways of running it: `python -m byzbn.flower ARGS` parses ARGS; `flwr run .` reads
the run config of pyproject.toml's [tool.flwr.app.config] (the same options, without their dashes:
`schemes = "naive,fbn"`, `byzantine = 2`, …; "" for an option left at its default), turns it into
the same arguments and parses them. Everything is checked, and the data loaded, before anything is
written; a bad option is an ArgumentError (one line, exit status 2).

Fixed by the engine: --algorithm fedavg (Flower rounds are FedAvg rounds), --device cpu, no checkpoints
(a Flower run is not resumable). Added: --rounds (or --steps = rounds × --local-steps), --supernodes (one
per client: the same number as --clients), --fraction-train, --byzantine-mode, --client-cpus.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

from byzbn.cli.errors import ArgumentError, HelpFormatter, OneLineParser, check
from byzbn.cli.options import OUTPUT, add_run_options, run_defaults
from byzbn.runs.build import DEFAULT_FEDAVG_LOCAL_STEPS
from byzbn.runs.config import Plan, plan_from_args

PROG = "python -m byzbn.flower"
FLOWER = "flower"
# The Flower engine runs FedAvg on CPU, checkpoints per round and measures no BN diagnostics.
FIXED = ("--algorithm", "--device", "--checkpoint-every", "--diagnostics", "--participation")
BYZANTINE_MODES = ("simulated", "self")
# Attacks a Byzantine node can run on its own reply: they need no other client's rows (sign-flip and foe
# of its own row, noise, faults) or none at all (label-flip poisons its labels). Used by byzbn.flower.client.
SELF_ATTACKS = ("sign-flip", "foe", "gaussian", "nan", "inf", "label-flip")

DESCRIPTION = """\
attack_eval's comparison on Flower: for every scheme in --schemes and every scenario (no-attack,
attack, attack+defense) the Flower Simulation Engine runs n = --clients SuperNodes (one per client,
f = --byzantine of them Byzantine) for --rounds FedAvg rounds of --local-steps local steps. Clients
train byzbn's CNN on their share with the scheme's BN behaviour and reply with their model update and,
apart, their BN statistics; byzbn's strategy aggregates the updates with --pre∘--defense when the
updates are attacked and merges the statistics with the scheme's robust two-phase merge, keeping the
global running statistics on the server. The same seed gives the same test accuracy, round by round,
as `python -m byzbn.attack_eval --algorithm fedavg` with the same options.

It prints final and best test accuracy per scheme × scenario and writes to --out: config.json,
metrics.jsonl, summary.json, summary.csv, curves.png. Runs offline (no telemetry, no update check).
Every bad argument prints one line to stderr and exits with status 2 before anything is written."""


@dataclass
class Experiment:
    """A validated Flower experiment: byzbn's Plan plus the Flower options."""

    plan: Plan
    rounds: int
    supernodes: int
    fraction_train: float = 1.0
    byzantine_mode: str = "simulated"
    client_cpus: float = 1.0
    shares: int = 0                 # partition shares (0: the plan's, h; n in the self mode)
    flower_logs: bool = False
    summary: list = field(default_factory=list)


def build_parser() -> OneLineParser:
    """The shared run options (but the engine's fixed ones), --out, and the Flower options."""
    p = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter)
    groups = add_run_options(p, skip=FIXED, defaults={"--steps": None, "--clients": None}, helps={
        "--steps": "each client's local steps in all (default: 300, or --rounds × --local-steps)",
        "--clients": "n: clients in total, Byzantine included; one SuperNode each (default: 10, or --supernodes)"})
    groups[OUTPUT].add_argument("--out", default=None, help="output directory (default: runs/<timestamp>)")
    fl = p.add_argument_group(FLOWER)
    fl.add_argument("--rounds", type=int, default=None,
                    help="FedAvg rounds (communications); sets --steps = rounds × --local-steps")
    fl.add_argument("--supernodes", type=int, default=None,
                    help="SuperNodes of the simulation, one per client: the same as --clients")
    fl.add_argument("--fraction-train", type=float, default=1.0,
                    help="fraction of the clients sampled per round (attack_eval's --participation): max(1, "
                         "floor(fraction·n)) clients drawn from (seed, round), the Byzantine ones sampled like the "
                         "others, so a round's Byzantine count varies (--defense-f says what f the defense is built for)")
    fl.add_argument("--byzantine-mode", default="simulated", choices=list(BYZANTINE_MODES),
                    help="simulated: the server forges the Byzantine clients' rows with --attack (omniscient, "
                         "byzbn's threat model); self: Byzantine nodes hold a data share and transform their own "
                         f"replies, as a real deployment's would (attacks {list(SELF_ATTACKS)})")
    fl.add_argument("--client-cpus", type=float, default=1.0,
                    help="CPUs the Simulation Engine reserves per client (Ray resources; fewer run concurrently)")
    fl.add_argument("--flower-logs", action="store_true", help="show Flower's per-round log lines")
    return p


def _resolve_counts(args: argparse.Namespace) -> None:
    """--clients/--supernodes and --steps/--rounds, each pair given once or consistently."""
    defaults = run_defaults()
    if args.supernodes is not None and args.clients is not None:
        check(args.supernodes == args.clients, f"--supernodes={args.supernodes} and --clients={args.clients} differ: "
                                               "every SuperNode is one client")
    args.clients = next(v for v in (args.clients, args.supernodes, defaults["clients"]) if v is not None)
    args.supernodes = args.clients
    local = DEFAULT_FEDAVG_LOCAL_STEPS if args.local_steps is None else args.local_steps
    if args.rounds is not None:
        check(args.rounds >= 1, f"--rounds={args.rounds} is out of range: valid >= 1")
        check(args.steps is None or args.steps == args.rounds * local,
              f"--steps={args.steps} and --rounds={args.rounds} disagree: --steps is --rounds × --local-steps "
              f"= {args.rounds * local}")
        args.steps = args.rounds * local
    elif args.steps is None:
        args.steps = defaults["steps"]


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    """Validate the parsed options (raising ArgumentError) and load the data; writes nothing."""
    from byzbn.schemes import SCHEMES

    _resolve_counts(args)
    check(0.0 < args.fraction_train <= 1.0, f"--fraction-train={args.fraction_train} is out of range: valid (0, 1]")
    check(args.client_cpus > 0, f"--client-cpus={args.client_cpus} is out of range: valid > 0")
    if args.byzantine_mode == "self":
        check(args.attack in SELF_ATTACKS + ("none",),
              f"--byzantine-mode self: attack {args.attack!r} needs the other clients' rows; a Byzantine node can run "
              f"only {list(SELF_ATTACKS)} on its own reply")
    args.algorithm, args.device, args.resume, args.checkpoint_every = "fedavg", "cpu", False, args.steps
    args.participation = args.fraction_train   # validated (the sample against the rule) as attack_eval's
    plan = plan_from_args(args)
    for s in plan.schemes:
        scheme = SCHEMES[s]
        check(scheme.attackable and not scheme.couples_clients,
              f"--schemes {s}: cannot run on Flower: " + ("it is the one-machine reference (no clients)"
                                                          if not scheme.attackable else
                                                          "its clients' passes are coupled (every BN layer "
                                                          "synchronizes inside the forward)"))
    n = args.clients
    plan.config = plan.config.with_changes(engine="flower")
    return Experiment(plan, rounds=args.steps // plan.config.local_steps, supernodes=n,
                      fraction_train=args.fraction_train, byzantine_mode=args.byzantine_mode,
                      client_cpus=args.client_cpus, shares=n if args.byzantine_mode == "self" else 0,
                      flower_logs=args.flower_logs)


def run_config_defaults() -> dict:
    """The run config a Flower app declares ([tool.flwr.app.config]): every option of the parser by its name
    without dashes, at its default ("" for none; append options as ";"-separated strings)."""
    table = {}
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        default = action.default
        table[action.option_strings[0][2:]] = "" if default is None or default == [] else default
    return table


def argv_from_run_config(run_config: dict) -> list[str]:
    """The command-line arguments a run config stands for (what `flwr run -c` overrides)."""
    parser = build_parser()
    flags = {a.option_strings[0][2:]: a for a in parser._actions if a.option_strings and a.dest != "help"}
    argv: list[str] = []
    for key, value in run_config.items():
        if key not in flags:
            raise ArgumentError(f"run config key {key!r} is not an option: valid keys are {sorted(flags)}")
        action, flag = flags[key], "--" + key
        if isinstance(action, argparse._StoreTrueAction):
            if value not in (True, False):
                raise ArgumentError(f"run config {key}={value!r}: expected true or false")
            argv += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            argv += [a for item in str(value).split(";") if item.strip() for a in (flag, item.strip())]
        elif value != "":
            argv += [flag, str(value)]
    return argv


def experiment_from_run_config(run_config: dict) -> Experiment:
    """The experiment of a `flwr run` run config (raises ArgumentError on a bad value)."""
    from byzbn.cli.plugins import load_plugins

    argv = argv_from_run_config(dict(run_config))
    load_plugins(argv)
    return experiment_from_args(build_parser().parse_args(argv))


def parse(argv: Optional[list[str]]) -> Experiment:
    """The command's experiment from argv (plugins imported first, so their names are valid choices)."""
    from byzbn.cli.plugins import load_plugins

    load_plugins(argv)
    return experiment_from_args(build_parser().parse_args(argv))


__all__ = ["PROG", "FIXED", "BYZANTINE_MODES", "SELF_ATTACKS", "Experiment", "build_parser", "experiment_from_args",
           "run_config_defaults", "argv_from_run_config", "experiment_from_run_config", "parse"]
