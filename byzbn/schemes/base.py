"""The scheme contract (DESIGN.md §4, §9): the registry, the statistics channel, and the Scheme base class.

A scheme is a small object built per run: `make_scheme(name, steps, **params)`. Every DSGD step t the
runner asks it what the BN layers do, runs the pass, and hands it what the layers returned:

    spec = scheme.bn_pass(t, channel)                   # a BNPass: mode, recording, FedTAN's sync
    ... one forward/backward of the stacked client batches inside byzbn.nn.run_bn_pass(layers, spec) ...
    scheme.server_update(layers, bn_stats, channel, t)  # bn_stats: per-layer ClientStats of the h clients

and adds `scheme.exchanges(t, len(layers))` to the run's communication count (client-server round
trips: one per DSGD step for the gradient exchange, statistics riding along; FedTAN adds 3 per BN
layer; the centralized reference has no clients and counts 0). `channel` (a StatsChannel) is the
scenario's side of the statistics channel this step: it turns the honest rows into the n-row submission
(Byzantine rows last, from the attack or the no-op) and carries the server's aggregator. The server
state is the layers' running_mean/running_var buffers: what eval mode normalizes with.

One submission row holds the statistics of ALL BN layers concatenated (concat_stats), so
distance-based defenses (NNM) see a client's whole submission, like a gradient; each layer keeps its
own element count through the concatenation.

Under FedAvg a scheme is built with steps = communication rounds, so FixBN's T* counts rounds; the
runner asks `local_bn_pass(round, local_step, channel)` for every local step and, at the end of the
round, calls `server_round(layers, steps, channel, round)` with what the layers returned at each local
step. With one local step, server_round is server_update.
"""
from __future__ import annotations

import abc
from functools import partial
from typing import Callable, ClassVar, Optional

import torch
from torch import nn

from byzbn import stats as bnstats
from byzbn._checks import check_int
from byzbn._registry import Registry
from byzbn.aggregation import AggregationState, attack_then_aggregate, detached, honest_aggregate
from byzbn.attacks import AttackContext, poisons_data
from byzbn.nn import BNPass, BNStats, FederatedBatchNorm

class StatsChannel:
    """The scenario's statistics channel at one step: n clients, the last f Byzantine.

    attack: None (Byzantine clients submit the honest mean, a no-op) or an attack from make_attack;
    fields: which BN field the attack targets ("mean", "var", "both"); aggregator: the server's rule
    [n, d] -> [d] (the mean, or a defense); context: the attack's view of this step (n, f, a seeded
    generator, the step, the model and batches); state: what a stateful rule remembers
    (byzbn.aggregation.AggregationState; `aggregate` advances it, the runner keeps it after the step);
    generator: the step's generator of a random rule (bucketing); honest: the clients whose data the
    merged statistics describe, n − f by default (byzbn.stats.robust_merge_stats' `clients`).
    """

    def __init__(self, attack: Optional[Callable], fields: str, aggregator: Callable[[torch.Tensor], torch.Tensor],
                 context: AttackContext, state: Optional[AggregationState] = None,
                 generator: Optional[torch.Generator] = None, honest: Optional[int] = None):
        self.attack, self.fields, self.aggregator, self.context = attack, fields, aggregator, context
        self.state = AggregationState() if state is None else state
        self.generator = generator
        self.honest = context.n - context.f if honest is None else honest
        # Diagnostics set a list here: every aggregate then appends (aggregate, the same rule's aggregate
        # without the Byzantine rows' attack), computed without side effects (byzbn.aggregation.honest_aggregate).
        self.references: Optional[list] = None

    @property
    def n(self) -> int:
        return self.context.n

    @property
    def f(self) -> int:
        return self.context.f

    def aggregate(self, rows: bnstats.ClientStats, noop: str = "union", merge: Optional[Callable] = None):
        """The server's statistics from the clients' rows (byzbn.aggregation.attack_then_aggregate).

        rows: the h honest clients' rows, or all n clients' rows when the Byzantine clients hold data:
        under a data-poisoning attack their own rows are what they submit; otherwise they are dropped
        and the Byzantine clients submit the attack's rows or the no-op. noop: what a Byzantine client
        sends on a field it leaves alone ("union" for batch statistics that the server merges, "mean"
        for running statistics that it averages; see byzbn.attacks.attack_stats). merge(rows,
        aggregator): what the server computes from the n rows (default: the two-phase robust merge, N
        counting the `honest` clients' union).
        """
        own = None
        if rows.n == self.n and self.f:
            honest = bnstats.ClientStats(rows.mean[: -self.f], rows.var[: -self.f], rows.count[: -self.f])
            if poisons_data(self.attack):
                own = bnstats.ClientStats(rows.mean[-self.f:], rows.var[-self.f:], rows.count[-self.f:])
            rows = honest
        if merge is None:
            merge = partial(bnstats.robust_merge_stats, clients=self.honest)
        reference = None
        if self.references is not None:  # before the real call, which advances the generator
            reference = honest_aggregate(rows, self.aggregator, self.state, self.generator, self.context, merge=merge,
                                         fields=self.fields, noop=noop)
        result, self.state = attack_then_aggregate(rows, self.attack, self.aggregator, self.state, self.generator,
                                                   self.context, own=own, merge=merge, fields=self.fields, noop=noop)
        if self.references is not None:
            self.references.append((detached(result), reference))
        return result


def write_running(layers: list[FederatedBatchNorm], mean: torch.Tensor, var: torch.Tensor) -> None:
    """Split concatenated running statistics back into the layers' buffers."""
    sizes = [layer.num_features for layer in layers]
    for layer, m, v in zip(layers, mean.split(sizes), var.split(sizes)):
        layer.running_mean.copy_(m)
        layer.running_var.copy_(v)


def update_running(layers: list[FederatedBatchNorm], merged: list[bnstats.GlobalStats], updates: int = 1) -> None:
    """Each layer's running statistics from its merged statistics, `updates` BN updates' worth of momentum."""
    for layer, part in zip(layers, merged):
        momentum = 1 - (1 - layer.momentum) ** updates
        new_mean, new_var = bnstats.update_running(layer.running_mean, layer.running_var, part, momentum)
        layer.running_mean.copy_(new_mean)
        layer.running_var.copy_(new_var)


class Scheme(abc.ABC):
    """Base class. Subclasses implement bn_pass and server_round, register with @register_scheme and
    override what else differs; their capabilities are the ClassVar[bool] attributes below."""

    name: ClassVar[str] = ""
    # False for schemes without BN statistics (e.g. GroupNorm): only gradients can then be attacked.
    has_stats: ClassVar[bool] = True
    # False for the centralized reference: it has no Byzantine clients, only the no-attack scenario.
    attackable: ClassVar[bool] = True
    # True when a client's output depends on the other clients' batches (the union's statistics): then
    # per-client gradients are not separable, and the per-client loop reference is one union batch.
    couples_clients: ClassVar[bool] = False
    # True when BN layers exchange statistics inside the forward (FedTAN): the pass needs every client.
    sync_layers: ClassVar[bool] = False

    def __init__(self, steps: int):
        self.steps = check_int("steps", steps, 1)

    def make_norm(self, num_features: int) -> nn.Module:
        """The normalization layer the model is built with (make_cnn's `norm`)."""
        return FederatedBatchNorm(num_features)

    def submits_stats(self, step: int) -> bool:
        """Whether clients send BN statistics at this step (the channel an attack can target)."""
        return True

    @abc.abstractmethod
    def bn_pass(self, step: int, channel: StatsChannel) -> BNPass:
        """What the BN layers do in the training pass of DSGD step `step` (the runner sets clients/backend)."""

    def local_bn_pass(self, round: int, local_step: int, channel: StatsChannel) -> BNPass:
        """FedAvg: what the BN layers do at local step `local_step` of `round` (by default, DSGD's step `round`)."""
        return self.bn_pass(round, channel)

    def server_update(self, layers: list[FederatedBatchNorm], bn: BNStats, channel: StatsChannel,
                      step: int) -> int:
        """Update the server's statistics from this step's honest per-layer stats; returns the clamp count."""
        return self.server_round(layers, [bn], channel, step)

    @abc.abstractmethod
    def server_round(self, layers: list[FederatedBatchNorm], steps: list[BNStats], channel: StatsChannel,
                     round: int) -> int:
        """FedAvg: update the server's statistics at the end of `round`; returns the clamp count."""

    def exchanges(self, step: int, num_bn_layers: int) -> int:
        """Client-server round trips at this step (DSGD: one; statistics ride with the momentums).

        Under FedAvg `step` is a round: one exchange of model updates (and statistics) per round."""
        return 1

    def __repr__(self) -> str:
        params = getattr(self, "params", None)
        if not isinstance(params, dict):  # built directly rather than by make_scheme: what it kept by name
            params = {k: getattr(self, k) for k in scheme_parameters(self.name) if hasattr(self, k)}
        args = "".join(f", {k}={v!r}" for k, v in params.items())
        return f"make_scheme({self.name!r}, steps={self.steps}{args})"


SCHEMES = Registry("scheme", base=Scheme, context=("steps",))


def register_scheme(name: str):
    """Class decorator: file a Scheme subclass in SCHEMES under `name` (unique; bn_pass and server_round
    implemented, capabilities bools, __init__(self, steps, **params))."""
    return SCHEMES.register(name)


def scheme_parameters(name: str) -> list[str]:
    """The keyword parameters (besides steps) that scheme `name` accepts."""
    return SCHEMES.parameters(name)


def make_scheme(name: str, steps: int, **params) -> Scheme:
    """Build scheme `name` for a run of `steps` DSGD steps (FedAvg rounds) with validated keyword parameters.

    The scheme keeps them, defaults filled in, as `scheme.params` (what its repr shows).
    """
    full = SCHEMES.check(name, params)
    scheme = SCHEMES.make(name, steps, **params)
    scheme.params = full
    return scheme


__all__ = ["SCHEMES", "register_scheme", "scheme_parameters", "make_scheme", "StatsChannel", "write_running",
           "update_running", "Scheme"]
