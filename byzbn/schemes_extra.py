"""The other seeds' schemes (DESIGN.md §4): FedTAN, Hybrid BN and the GroupNorm baseline.

Imported by byzbn.schemes (at its end), so they are in SCHEMES whenever byzbn.schemes is.

FedTAN's gradient path. Every BN layer sends the clients' per-layer (μ_i, v_i) through the scenario's
statistics channel inside the forward and normalizes every client with the robust merge. Gradients
flow through the merge into the honest rows, and into the no-op rows (functions of the honest rows)
that Byzantine clients send on the fields they leave alone, so that without an attack the mean is
exactly BN on the union of the honest batches, forward and backward, whatever f. The rows an attack
computes are detached constants: in the protocol the server differentiates the aggregate with respect
to each submitted row and each client backpropagates its own row; nobody differentiates through the
attacker's computation (which also keeps the optimal attacks' line search out of autograd). The
backward exchange itself (the third of FedTAN's three per layer) is not attacked.
"""
from __future__ import annotations

import torch
from torch import nn

from byzbn import stats as bnstats
from byzbn._checks import check_int
from byzbn.norm import HybridBatchNorm, configure
from byzbn.schemes import FederatedBN, Scheme, StatsChannel, register_scheme

# FedTAN's exchanges per BN layer per synchronized step: the means, the variances (which need the
# merged mean first: two-phase), and the backward's gradient with respect to the merged statistics.
FEDTAN_EXCHANGES_PER_LAYER = 3
# Hsieh et al. 2020 ("The Non-IID Data Quagmire of Decentralized Machine Learning") replace BN with
# GroupNorm of 2 groups; FixBN's comparison follows them.
DEFAULT_GROUPS = 2


def differentiable_submission(channel: StatsChannel, honest: bnstats.ClientStats) -> bnstats.ClientStats:
    """The n-row submission for one layer's honest rows (which may carry gradients).

    As channel.submit, but the no-op rows are computed from `honest` itself (so gradients flow through
    them) and the attacked fields' Byzantine rows from a detached copy (constants).
    """
    quiet = StatsChannel(channel.n, channel.f, None, channel.fields, channel.aggregator).submit(honest)
    if channel.attack is None:
        return quiet
    with torch.no_grad():
        detached = bnstats.ClientStats(honest.mean.detach(), honest.var.detach(), honest.count)
        attacked = channel.submit(detached)
    h = honest.n
    fields = {"mean", "var"} if channel.fields == "both" else {channel.fields}
    mean = torch.cat([honest.mean, attacked.mean[h:]]) if "mean" in fields else quiet.mean
    var = torch.cat([honest.var, attacked.var[h:]]) if "var" in fields else quiet.var
    return bnstats.ClientStats(mean, var, quiet.count)


def differentiable_robust_merge(rows: bnstats.ClientStats, defense) -> bnstats.GlobalStats:
    """byzbn.stats.robust_merge_stats (same values), with a backward that survives non-finite rows.

    A NaN/Inf row (a fault attack) never reaches a robust aggregate, so its gradient is 0, but the
    backward of (μ_i − μ̂)² would multiply that 0 by ±Inf: its deviation is a constant instead.
    """
    mean = defense(rows.mean)
    deviation = rows.mean - mean
    deviation = torch.where(torch.isfinite(deviation), deviation, deviation.detach())
    var = defense(rows.var + deviation ** 2)
    negative = var < 0
    var = torch.where(negative, torch.zeros_like(var), var)
    total = rows.n * int(rows.count.median())
    if total < 2:
        raise ValueError(f"the total count N must be >= 2 to form the unbiased variance, got N={total}")
    return bnstats.GlobalStats(mean, var, var * (total / (total - 1)), total, int(negative.sum()))


def synchronize(channel: StatsChannel, honest: bnstats.ClientStats) -> bnstats.GlobalStats:
    """One layer's global batch statistics: the attacked submission, robust-merged (DESIGN.md §3)."""
    return differentiable_robust_merge(differentiable_submission(channel, honest), channel.aggregator)


@register_scheme("fedtan")
class FedTAN(Scheme):
    """FedTAN: layer-wise synchronization; every layer normalizes with this step's global batch statistics.

    The statistics of each layer are aggregated from the clients' rows of that layer (the attack
    applied per layer, the channel's aggregator, two-phase merge) inside the forward, with gradients
    through the aggregate (see the module docstring). The server's running statistics (what eval
    uses) are updated from the same merged statistics, unbiased with N = n·count as FBN's. Each
    synchronized step costs 3 exchanges per BN layer plus the gradient exchange. Under FedAvg the
    first local step of each round is synchronized (all clients hold the broadcast model); the later
    local steps normalize with the clients' own batch statistics and are not communicated.
    """

    couples_clients = True
    sync_layers = True

    def _sync(self, honest: bnstats.ClientStats) -> bnstats.GlobalStats:
        if self.channel is None:
            raise ValueError("scheme 'fedtan' needs its statistics channel: call bind(channel, layers) first")
        return synchronize(self.channel, honest)

    def prepare(self, layers, step):
        configure(layers, mode="sync", record=True, sync=self._sync)

    def prepare_local(self, layers, round, local_step):
        if local_step == 0:
            self.prepare(layers, round)
        else:
            configure(layers, mode="client", record=True)

    def exchanges(self, step):
        return FEDTAN_EXCHANGES_PER_LAYER * self.num_bn_layers + 1

    def server_update(self, layers, honest, channel, step):
        return self._update_from_sync(layers, updates=1)

    def server_round(self, layers, steps_stats, channel, round):
        return self._update_from_sync(layers, updates=len(steps_stats))

    @staticmethod
    def _update_from_sync(layers, updates: int) -> int:
        clamped = 0
        for layer in layers:
            merged = layer.sync_stats
            if merged is None:
                raise ValueError("fedtan's server update needs a synchronized pass first "
                                 "(the layer holds no sync_stats)")
            momentum = 1 - (1 - layer.momentum) ** updates
            new_mean, new_var = bnstats.update_running(layer.running_mean, layer.running_var, merged, momentum)
            layer.running_mean.copy_(new_mean)
            layer.running_var.copy_(new_var)
            clamped += merged.clamped
        return clamped


@register_scheme("hbn")
class HybridBN(FederatedBN):
    """Hybrid BN: clients normalize with (1 − a)·global + a·batch, a = sigmoid(d) learnable per channel.

    d starts at 0 (a = 1/2). The global statistics are the server's running statistics, updated as
    FBN's from the robust (with the mean: exact, unbiased) merge of the clients' batch statistics,
    which clients submit every step; evaluation uses the global statistics.
    """

    def make_norm(self, num_features: int) -> nn.Module:
        return HybridBatchNorm(num_features)

    def prepare(self, layers, step):
        configure(layers, mode="hybrid", record=True)


@register_scheme("groupnorm")
class GroupNormScheme(Scheme):
    """GroupNorm in place of BN: no statistics are exchanged, so only the gradients can be attacked.

    groups: groups per normalization layer (default 2, as Hsieh et al. 2020); it must divide the
    channel count of every layer.
    """

    has_stats = False

    def __init__(self, steps: int, groups: int = DEFAULT_GROUPS):
        super().__init__(steps)
        self.groups = check_int("groups", groups, 1)

    def make_norm(self, num_features: int) -> nn.Module:
        if num_features % self.groups:
            raise ValueError(f"groups={self.groups} does not divide a normalization layer's {num_features} "
                             f"channels: choose groups dividing every layer's channel count (or another width)")
        return nn.GroupNorm(self.groups, num_features)

    def submits_stats(self, step):
        return False

    def prepare(self, layers, step):
        pass

    def server_update(self, layers, honest, channel, step):
        return 0

    def server_round(self, layers, steps_stats, channel, round):
        return 0

    def __repr__(self) -> str:
        return f"make_scheme('groupnorm', steps={self.steps}, groups={self.groups})"


__all__ = ["FEDTAN_EXCHANGES_PER_LAYER", "DEFAULT_GROUPS", "differentiable_submission", "differentiable_robust_merge",
           "synchronize", "FedTAN",
           "HybridBN", "GroupNormScheme"]
