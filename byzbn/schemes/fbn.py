"""Federated BatchNorm (FBN): everyone normalizes with the shared running statistics, robust-merged."""
from __future__ import annotations

from byzbn import stats as bnstats
from byzbn.nn import BNPass
from byzbn.schemes.base import Scheme, register_scheme, update_running


def merge_round(layers, steps, channel) -> tuple[list[bnstats.GlobalStats], int]:
    """The server's per-layer statistics from a round's honest statistics: attacked, robust-merged.

    A client submits, per layer, the exact merge of its batches of the round (one step under DSGD); one
    submission row holds all layers, so the defense sees the client's whole submission.
    """
    per_layer = [bnstats.merge_steps([bn.clients[k] for bn in steps]) for k in range(len(layers))]
    merged = channel.aggregate(bnstats.concat_stats(per_layer))
    return bnstats.split_stats(merged, [layer.num_features for layer in layers]), merged.clamped


@register_scheme("fbn")
class FederatedBN(Scheme):
    """FBN: every client normalizes with the shared running statistics; clients submit batch (μ_i, v_i).

    The server robust-merges the n submissions (byzbn.stats.robust_merge_stats with the channel's
    aggregator: the mean reduces it to the exact union statistics) and updates the shared running
    statistics with each layer's momentum. Under FedAvg a client submits the merge of its E batches
    of the round, and the server's single update per round uses momentum 1 − (1 − m)^E.
    """

    def bn_pass(self, step, channel):
        return BNPass(mode="global", record=True)

    def server_round(self, layers, steps, channel, round):
        parts, clamped = merge_round(layers, steps, channel)
        update_running(layers, parts, updates=len(steps))
        return clamped


__all__ = ["merge_round", "FederatedBN"]
