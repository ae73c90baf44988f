"""FedTAN: layer-wise synchronization of the BN statistics inside the forward (DESIGN.md §4).

Every BN layer sends the clients' per-layer (μ_i, v_i) through the scenario's statistics channel inside
the forward and normalizes every client with the robust merge. Gradients flow through the merge into
the honest rows, and into the no-op rows (functions of the honest rows) that Byzantine clients send on
the fields they leave alone, so that without an attack the mean is exactly BN on the union of the
honest batches, forward and backward, whatever f. The rows an attack computes are detached constants:
in the protocol the server differentiates the aggregate with respect to each submitted row and each
client backpropagates its own row; nobody differentiates through the attacker's computation (which
also keeps the optimal attacks' line search out of autograd). The backward exchange itself (the third
of FedTAN's three per layer) is not attacked.
"""
from __future__ import annotations

from functools import partial

from byzbn import stats as bnstats
from byzbn.nn import BNPass
from byzbn.schemes.base import Scheme, StatsChannel, register_scheme, update_running

# FedTAN's exchanges per BN layer per synchronized step: the means, the variances (which need the
# merged mean first: two-phase), and the backward's gradient with respect to the merged statistics.
FEDTAN_EXCHANGES_PER_LAYER = 3


def synchronize(channel: StatsChannel, honest: bnstats.ClientStats) -> bnstats.GlobalStats:
    """One layer's global batch statistics: the attacked submission, robust-merged (DESIGN.md §3).

    The channel's one attack-then-aggregate path, whose statistics submission is differentiable in the
    honest rows (byzbn.aggregation.stats_submission); each layer is one more call of the step.
    """
    return channel.aggregate(honest)


@register_scheme("fedtan")
class FedTAN(Scheme):
    """FedTAN: layer-wise synchronization; every layer normalizes with this step's global batch statistics.

    The statistics of each layer are aggregated from the clients' rows of that layer (the attack
    applied per layer, the channel's aggregator, two-phase merge) inside the forward, with gradients
    through the aggregate (see the module docstring). The server's running statistics (what eval
    uses) are updated from the same merged statistics, unbiased with N = (n − f)·count (the honest
    clients' union) as FBN's. Each
    synchronized step costs 3 exchanges per BN layer plus the gradient exchange. Under FedAvg the
    first local step of each round is synchronized (all clients hold the broadcast model); the later
    local steps normalize with the clients' own batch statistics and are not communicated.
    """

    couples_clients = True
    sync_layers = True

    def bn_pass(self, step, channel):
        return BNPass(mode="sync", record=True, sync=partial(synchronize, channel))

    def local_bn_pass(self, round, local_step, channel):
        return self.bn_pass(round, channel) if local_step == 0 else BNPass(mode="client", record=True)

    def exchanges(self, step, num_bn_layers):
        return FEDTAN_EXCHANGES_PER_LAYER * num_bn_layers + 1

    def server_round(self, layers, steps, channel, round):
        merged = steps[0].merged
        if merged is None:
            raise ValueError("fedtan's server update needs the merged statistics of a synchronized pass")
        update_running(layers, merged, updates=len(steps))
        return sum(m.clamped for m in merged)


__all__ = ["FEDTAN_EXCHANGES_PER_LAYER", "synchronize", "FedTAN"]
