"""What a run's configuration (attack_eval's config.json) means: schemes, algorithm, and the Federation it builds.

Shared by every command (byzbn.cli), the sweep engine (byzbn.grid) and the tools built on them; every
function takes the typed run configuration (byzbn.runs.run_config.RunConfig) and raises ValueError with
a one-line message, which the commands' validator reports as a bad argument.
"""
from __future__ import annotations

from typing import Optional

import torch

from byzbn.fl.dsgd import Federation
from byzbn.fl.fedavg import FedAvgFederation
from byzbn.fl.federation import FederationBase
from byzbn.fl.scenario import make_scenario
from byzbn.nn.zoo import build_model, model_builder
from byzbn.runs.run_config import RunConfig
from byzbn.schemes import SCHEMES, make_scheme

ALGORITHMS = ("dsgd", "fedavg")
DEFAULT_FEDAVG_LOCAL_STEPS = 5

SCHEME_SUMMARY = """\
    centralized  BN on the union of the honest batches, one machine (reference upper bound, no attack,
                 no communication; it takes every step on the union batch under fedavg too)
    naive        clients normalize with their own batch statistics, submit their running statistics
    fbn          Federated BN: everyone normalizes with the shared running statistics; batch statistics
                 are robust-merged (two-phase, unbiased) into them
    fixbn        naive until T* (--fixbn-freeze), then the frozen global statistics, nothing submitted
    fedtan       layer-wise synchronization: every BN layer normalizes with this step's global batch
                 statistics, robust-merged per layer inside the forward (3 exchanges per BN layer)
    hbn          Hybrid BN: (1 - a)·global + a·batch, a = sigmoid(d) learnable per channel; global as fbn
    groupnorm    GroupNorm (--groups) instead of BN: no statistics, only gradients can be attacked
"""


def aggregator_names() -> list[str]:
    """The registered robust rules, plugins' included (read at call time)."""
    from byzbn.defenses import AGGREGATORS

    return sorted(AGGREGATORS)


def pre_aggregator_names() -> list[str]:
    """The registered pre-aggregators, plugins' included (read at call time)."""
    from byzbn.defenses import PRE_AGGREGATORS

    return sorted(PRE_AGGREGATORS)


# The scheme parameters that have an option of their own: option (config name) -> (scheme, parameter).
# `--fixbn-freeze X` is `--scheme-param fixbn.freeze=X`; a --scheme-param given for the same parameter wins.
SCHEME_SHORTHANDS = {"fixbn_freeze": ("fixbn", "freeze"), "groups": ("groupnorm", "groups")}


def scheme_params(name: str, config: RunConfig) -> dict:
    """The keyword parameters scheme `name` is built with: its shorthand options, then its --scheme-param
    values (config.scheme_params[name]); see byzbn.schemes.make_scheme."""
    shorthands = {param: getattr(config, option) for option, (scheme, param) in SCHEME_SHORTHANDS.items()
                  if scheme == name}
    return {**shorthands, **config.params_of_scheme(name)}


def uses_fedavg(name: str, config: RunConfig) -> bool:
    """Whether scheme `name` trains with FedAvg in this configuration (the centralized reference never does)."""
    return config.algorithm == "fedavg" and SCHEMES[name].attackable


def scheme_steps(name: str, config: RunConfig) -> int:
    """The `steps` scheme `name` is built with: DSGD steps, or communication rounds under FedAvg."""
    return config.steps // config.local_steps if uses_fedavg(name, config) else config.steps


def runs_attacked(name: str, target: str) -> bool:
    """Whether scheme `name` has attack scenarios for --target (else it runs no-attack only)."""
    scheme = SCHEMES[name]
    return scheme.attackable and (scheme.has_stats or target != "stats")


def resolve_local_steps(algorithm: str, local_steps: Optional[int], reset_client_momentum: bool, steps: int) -> int:
    """E for the run: 1 under DSGD; --local-steps (default 5) under FedAvg, dividing --steps."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm {algorithm!r} is unknown: valid {list(ALGORITHMS)}")
    if algorithm == "dsgd":
        if local_steps not in (None, 1):
            raise ValueError(f"--local-steps={local_steps} needs --algorithm fedavg "
                             "(DSGD communicates after every step)")
        if reset_client_momentum:
            raise ValueError("--reset-client-momentum needs --algorithm fedavg (DSGD clients never start a round)")
        return 1
    local_steps = DEFAULT_FEDAVG_LOCAL_STEPS if local_steps is None else local_steps
    if local_steps < 1:
        raise ValueError(f"--local-steps={local_steps} is out of range: valid >= 1")
    if steps % local_steps:
        lower, upper = steps // local_steps * local_steps, (steps // local_steps + 1) * local_steps
        raise ValueError(f"--steps={steps} is not a multiple of --local-steps={local_steps}: under fedavg --steps "
                         f"counts each client's local steps in whole rounds (e.g. --steps {lower or upper} or {upper})")
    return local_steps


def check_statistics_target(schemes: list[str], attacking: bool, target: str) -> None:
    """A statistics attack needs a scheme that exchanges statistics (groupnorm alone has none to attack)."""
    if not attacking or target != "stats" or any(runs_attacked(s, target) for s in schemes):
        return
    without = [s for s in schemes if SCHEMES[s].attackable]
    if without:
        raise ValueError(f"--target stats: scheme(s) {without} exchange no BN statistics, so a statistics attack "
                         "has nothing to target; use --target grads or both, or add a BN scheme")


def dry_build(name: str, config: RunConfig, dataset) -> None:
    """Build scheme `name`'s model once (on CPU, thrown away) so that a bad combination fails early."""
    scheme = make_scheme(name, scheme_steps(name, config), **scheme_params(name, config))
    try:
        model_builder(config.model)
    except ValueError as error:
        raise ValueError(f"--model {config.model}: {error}") from error
    try:
        build_model(config.model, dataset.input_shape, dataset.num_classes, config.width, scheme)
    except ValueError as error:
        raise ValueError(f"--model {config.model} --schemes {name} at --width {config.width}: {error}") from error


def build_federation(config: RunConfig, name: str, scenario_name: str, dataset, client_indices: torch.Tensor,
                     device: torch.device, attack, defense) -> FederationBase:
    """The Federation (DSGD) or FedAvgFederation of one scheme × scenario run, model seeded by config.seed."""
    c = config
    scheme = make_scheme(name, scheme_steps(name, c), **scheme_params(name, c))
    scenario = make_scenario(scenario_name, c.clients, c.byzantine, attack, defense,
                             target=c.target, fields=c.attack_fields)
    torch.manual_seed(c.seed)  # the same initial model for every scheme and scenario
    model = build_model(c.model, dataset.input_shape, dataset.num_classes, c.width, scheme)
    model.to(device)
    common = dict(batch_size=c.batch_size, lr=c.lr, momentum=c.momentum, seed=c.seed, participation=c.participation,
                  defense_f=c.defense_f)
    data = (dataset.x_train.to(device), dataset.y_train.to(device), client_indices)
    if uses_fedavg(name, c):
        return FedAvgFederation(model, scheme, scenario, *data, local_steps=c.local_steps,
                                reset_client_momentum=c.reset_client_momentum, **common)
    return Federation(model, scheme, scenario, *data, **common)


__all__ = ["ALGORITHMS", "DEFAULT_FEDAVG_LOCAL_STEPS", "SCHEME_SUMMARY", "aggregator_names",
           "pre_aggregator_names", "SCHEME_SHORTHANDS", "scheme_params",
           "uses_fedavg", "scheme_steps", "runs_attacked", "resolve_local_steps", "check_statistics_target",
           "dry_build", "build_federation"]
