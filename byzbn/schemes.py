"""BN schemes (DESIGN.md §4): what each layer normalizes with, what clients submit, what the server does.

A scheme is a small object built per run: `make_scheme(name, steps, **params)`. The runner first calls
`scheme.bind(channel, layers)` (the run's statistics channel and BN layers), then, every DSGD step t,

    scheme.prepare(layers, t)                        # set each FederatedBatchNorm's mode / recording
    ... one forward/backward of the stacked client batches ...
    scheme.server_update(layers, honest, channel, t) # honest: per-layer ClientStats of the h clients

and adds `scheme.exchanges(t)` to the run's communication count (client-server round trips: one per DSGD
step for the gradient exchange, statistics riding along; FedTAN adds 3 per BN layer; the centralized
reference has no clients and counts 0). `channel` (a StatsChannel) holds
the scenario's side of the statistics channel: it turns the honest rows into the n-row submission
(Byzantine rows last, from the attack or the no-op) and carries the server's aggregator. The server
state is the layers' running_mean/running_var buffers: what eval mode normalizes with.

One submission row holds the statistics of ALL BN layers concatenated (concat_stats), so
distance-based defenses (NNM) see a client's whole submission, like a gradient. Unbiased variances
use each layer's own element count.

Under FedAvg (byzbn.fedavg) a scheme is built with steps = communication rounds, so FixBN's T* counts
rounds; the runner calls `prepare_local(layers, round, local_step)` before every local step and, at
the end of the round, `server_round(layers, steps_stats, channel, round)` with the honest clients'
recorded statistics of each local step (a list over local steps of per-layer ClientStats). With one
local step, server_round is server_update. What each scheme makes of a round of E local steps:
naive/fixbn submit the clients' local running statistics after E local updates from the broadcast;
fbn/hbn submit each client's statistics of the round (the exact merge of its E batches) and the server
updates its running statistics once with momentum 1 − (1 − m)^E (E updates' worth); fedtan
synchronizes the first local step (in the forward) and updates from that step's merged statistics
with the same momentum. The schemes other than the ones in this module live in byzbn.schemes_extra.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch
from torch import nn

from byzbn import stats as bnstats
from byzbn._checks import check_int
from byzbn._registry import check_parameters, file_class, keyword_parameters
from byzbn.norm import FederatedBatchNorm, configure

SCHEMES: dict[str, type["Scheme"]] = {}


def register_scheme(name: str):
    """Class decorator: file a Scheme subclass in SCHEMES under `name` (names are unique)."""

    return lambda cls: file_class(SCHEMES, "scheme", name, cls)


def scheme_parameters(name: str) -> list[str]:
    """The keyword parameters (besides steps) that scheme `name` accepts."""
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}: valid schemes are {sorted(SCHEMES)}")
    return keyword_parameters(SCHEMES[name], skip=("steps",))


def make_scheme(name: str, steps: int, **params) -> "Scheme":
    """Build scheme `name` for a run of `steps` DSGD steps with validated keyword parameters."""
    check_parameters("scheme", name, params, scheme_parameters(name))
    return SCHEMES[name](steps, **params)


@dataclass(frozen=True)
class StatsChannel:
    """The scenario's statistics channel: n clients, the last f Byzantine.

    attack: None (Byzantine clients submit the honest mean, a no-op) or an attack from make_attack;
    fields: which BN field the attack targets ("mean", "var", "both"); aggregator: the server's rule
    [n, d] -> [d] (the mean, or a defense), also handed to attacks that optimise against it.
    """

    n: int
    f: int
    attack: Optional[Callable]
    fields: str
    aggregator: Callable[[torch.Tensor], torch.Tensor]

    def submit(self, honest: bnstats.ClientStats, noop: str = "union") -> bnstats.ClientStats:
        """The n-row submission: the h honest rows, then the f Byzantine rows.

        noop: what a Byzantine client sends on a field it leaves alone ("union" for batch statistics
        that the server merges, "mean" for running statistics that it averages; see attack_stats).
        """
        from byzbn.attacks import attack_stats

        return attack_stats(honest, self.attack, self.n, self.f, fields=self.fields, defense=self.aggregator,
                            noop=noop)


def _flat(layers: list[FederatedBatchNorm], name: str) -> torch.Tensor:
    return torch.cat([getattr(layer, name) for layer in layers])


def _write_running(layers: list[FederatedBatchNorm], mean: torch.Tensor, var: torch.Tensor) -> None:
    sizes = [layer.num_features for layer in layers]
    for layer, m, v in zip(layers, mean.split(sizes), var.split(sizes)):
        layer.running_mean.copy_(m)
        layer.running_var.copy_(v)


def _unbiased(var: torch.Tensor, count: int) -> torch.Tensor:
    if count < 2:
        raise ValueError(f"a BN layer saw {count} element(s) per channel: the unbiased variance needs >= 2")
    return var * (count / (count - 1))


class Scheme:
    """Base class. Subclasses set `name` via @register_scheme and override what differs."""

    name: ClassVar[str] = ""
    # False for schemes without BN statistics (e.g. GroupNorm): only gradients can then be attacked.
    has_stats: ClassVar[bool] = True
    # False for the centralized reference: it has no Byzantine clients, only the no-attack scenario.
    attackable: ClassVar[bool] = True
    # True when a client's output depends on the other clients' batches (the union's statistics): then
    # per-client gradients are not separable, and the per-client loop reference is one union batch.
    couples_clients: ClassVar[bool] = False

    # True when BN layers exchange statistics inside the forward (FedTAN): the scheme needs bind().
    sync_layers: ClassVar[bool] = False

    def __init__(self, steps: int):
        self.steps = check_int("steps", steps, 1)
        self.channel: Optional[StatsChannel] = None
        self.num_bn_layers = 0

    def bind(self, channel: StatsChannel, layers: list[FederatedBatchNorm]) -> None:
        """Attach the run's statistics channel and BN layers (the runner calls this once, before training)."""
        self.channel, self.num_bn_layers = channel, len(layers)

    def make_norm(self, num_features: int) -> nn.Module:
        """The normalization layer the model is built with (make_cnn's `norm`)."""
        return FederatedBatchNorm(num_features)

    def submits_stats(self, step: int) -> bool:
        """Whether clients send BN statistics at this step (the channel an attack can target)."""
        return True

    def prepare(self, layers: list[FederatedBatchNorm], step: int) -> None:
        """Set the layers' mode and recording for the training pass of `step`."""
        raise NotImplementedError

    def server_update(self, layers: list[FederatedBatchNorm], honest: list[bnstats.ClientStats],
                      channel: StatsChannel, step: int) -> int:
        """Update the server's statistics from this step's honest per-layer stats; returns the clamp count."""
        raise NotImplementedError

    def exchanges(self, step: int) -> int:
        """Client-server round trips at this step (DSGD: one; statistics ride with the momentums).

        Under FedAvg `step` is a round: one exchange of model updates (and statistics) per round."""
        return 1

    def prepare_local(self, layers: list[FederatedBatchNorm], round: int, local_step: int) -> None:
        """FedAvg: set the layers for local step `local_step` of `round` (by default as DSGD's step `round`)."""
        self.prepare(layers, round)

    def server_round(self, layers: list[FederatedBatchNorm], steps_stats: list[list[bnstats.ClientStats]],
                     channel: StatsChannel, round: int) -> int:
        """FedAvg: update the server's statistics at the end of `round`; returns the clamp count."""
        if len(steps_stats) == 1:
            return self.server_update(layers, steps_stats[0], channel, round)
        raise ValueError(f"scheme {self.name!r} defines no FedAvg round of {len(steps_stats)} local steps")

    def __repr__(self) -> str:
        return f"make_scheme({self.name!r}, steps={self.steps})"


@register_scheme("centralized")
class Centralized(Scheme):
    """Reference upper bound: BN on the union of the honest batches, exact running statistics, no attack."""

    attackable = False
    couples_clients = True

    def exchanges(self, step):
        return 0  # one machine holds the union: nothing is communicated

    def prepare(self, layers, step):
        configure(layers, mode="union", record=True)

    def server_update(self, layers, honest, channel, step):
        for layer, s in zip(layers, honest):
            merged = bnstats.merge_stats(s)
            new_mean, new_var = bnstats.update_running(layer.running_mean, layer.running_var, merged, layer.momentum)
            layer.running_mean.copy_(new_mean)
            layer.running_var.copy_(new_var)
        return 0


@register_scheme("naive")
class Naive(Scheme):
    """Naive BN: clients normalize with their own batch statistics and submit their running statistics.

    A client's running statistics after the step are (1 − m)·r + m·(μ_i, unbiased v_i), r the server's
    last broadcast (clients adopt the broadcast, so no per-client state is kept); under FedAvg the
    client folds in the E batches of the round, one update per local step. The server aggregates the
    submitted running means and running variances coordinate-wise (mean, or the defense, applied to
    the means and to the variances separately) and broadcasts them. A negative aggregated variance is
    clamped to 0 and counted.
    """

    def prepare(self, layers, step):
        configure(layers, mode="client", record=True)

    def server_update(self, layers, honest, channel, step):
        return self.server_round(layers, [honest], channel, step)

    def server_round(self, layers, steps_stats, channel, round):
        momentum = torch.tensor([layer.momentum for layer in layers for _ in range(layer.num_features)],
                                dtype=layers[0].running_mean.dtype, device=layers[0].running_mean.device)
        running_mean, running_var = _flat(layers, "running_mean"), _flat(layers, "running_var")
        for honest in steps_stats:
            batch_mean = torch.cat([s.mean for s in honest], dim=1)
            batch_var = torch.cat([_unbiased(s.var, int(s.count[0])) for s in honest], dim=1)
            running_mean = (1 - momentum) * running_mean + momentum * batch_mean
            running_var = (1 - momentum) * running_var + momentum * batch_var
        rows = channel.submit(bnstats.ClientStats(running_mean, running_var, steps_stats[0][0].count), noop="mean")
        mean, var = channel.aggregator(rows.mean), channel.aggregator(rows.var)
        negative = var < 0
        _write_running(layers, mean, torch.where(negative, torch.zeros_like(var), var))
        return int(negative.sum())


def merge_local_steps(steps: list[bnstats.ClientStats]) -> bnstats.ClientStats:
    """Per client, the exact statistics of its batches over several local steps (one layer, h rows each)."""
    if len(steps) == 1:
        return steps[0]
    means, variances = torch.stack([s.mean for s in steps]), torch.stack([s.var for s in steps])  # [E, h, C]
    weights = torch.stack([s.count for s in steps]).to(means.dtype)[:, :, None]
    total = weights.sum(dim=0)
    mean = (weights * means).sum(dim=0) / total
    var = (weights * (variances + (means - mean) ** 2)).sum(dim=0) / total
    return bnstats.ClientStats(mean, var, sum(s.count for s in steps))


def update_running_merged(layers: list[FederatedBatchNorm], merged: bnstats.GlobalStats, n: int,
                          counts: list[int], updates: int = 1) -> None:
    """The server's running statistics from a merge of the concatenated layers, `updates` steps' worth.

    counts: each layer's elements per channel per client (N = n·count for the unbiased variance).
    """
    parts = bnstats.split_stats(merged, [layer.num_features for layer in layers])
    for layer, part, count in zip(layers, parts, counts):
        # split_stats keeps the first layer's N: redo N/(N−1) with this layer's own count.
        total = n * count
        part = bnstats.GlobalStats(part.mean, part.var, _unbiased(part.var, total), total)
        momentum = 1 - (1 - layer.momentum) ** updates
        new_mean, new_var = bnstats.update_running(layer.running_mean, layer.running_var, part, momentum)
        layer.running_mean.copy_(new_mean)
        layer.running_var.copy_(new_var)


@register_scheme("fbn")
class FederatedBN(Scheme):
    """FBN: every client normalizes with the shared running statistics; clients submit batch (μ_i, v_i).

    The server robust-merges the n submissions (byzbn.stats.robust_merge_stats with the channel's
    aggregator: the mean reduces it to the exact union statistics) and updates the shared running
    statistics with each layer's momentum. Under FedAvg a client submits the merge of its E batches
    of the round, and the server's single update per round uses momentum 1 − (1 − m)^E.
    """

    def prepare(self, layers, step):
        configure(layers, mode="global", record=True)

    def server_update(self, layers, honest, channel, step):
        return self.server_round(layers, [honest], channel, step)

    def server_round(self, layers, steps_stats, channel, round):
        per_layer = [merge_local_steps([step[k] for step in steps_stats]) for k in range(len(layers))]
        rows = channel.submit(bnstats.concat_stats(per_layer))
        merged = bnstats.robust_merge_stats(rows, channel.aggregator)
        update_running_merged(layers, merged, channel.n, [int(s.count[0]) for s in per_layer], len(steps_stats))
        return merged.clamped


@register_scheme("fixbn")
class FixBN(Scheme):
    """FixBN: naive BN for the first T* = round(freeze · steps) steps, then the frozen global statistics.

    After T* the layers normalize with the server's running statistics as constants, clients submit
    no statistics (nothing to attack there) and the server's statistics stay fixed. Under FedAvg steps
    are rounds: T* is a round, and every local step of a round is in the same phase.
    """

    def __init__(self, steps: int, freeze: float = 0.5):
        super().__init__(steps)
        if isinstance(freeze, bool) or not isinstance(freeze, (int, float)) or not 0.0 <= freeze <= 1.0:
            raise ValueError(f"freeze must be a fraction of the steps in [0, 1], got {freeze!r}")
        self.freeze = float(freeze)
        self.freeze_step = round(self.freeze * self.steps)
        self._naive = Naive(steps)

    def submits_stats(self, step):
        return step < self.freeze_step

    def prepare(self, layers, step):
        if self.submits_stats(step):
            self._naive.prepare(layers, step)
        else:
            configure(layers, mode="global", record=False)

    def server_update(self, layers, honest, channel, step):
        return self.server_round(layers, [honest], channel, step)

    def server_round(self, layers, steps_stats, channel, round):
        if not self.submits_stats(round):
            return 0
        return self._naive.server_round(layers, steps_stats, channel, round)

    def __repr__(self) -> str:
        return f"make_scheme('fixbn', steps={self.steps}, freeze={self.freeze})"


__all__ = ["SCHEMES", "register_scheme", "scheme_parameters", "make_scheme", "StatsChannel", "Scheme",
           "merge_local_steps", "update_running_merged", "Centralized", "Naive", "FederatedBN", "FixBN"]

# FedTAN, Hybrid BN and GroupNorm register themselves in SCHEMES on import; imported last because they
# build on the names above.
from byzbn import schemes_extra  # noqa: E402,F401
