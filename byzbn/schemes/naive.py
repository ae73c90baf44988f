"""Naive BN: clients normalize with their own batch statistics and submit their running statistics."""
from __future__ import annotations

import torch

from byzbn import stats as bnstats
from byzbn.nn import BNPass
from byzbn.schemes.base import Scheme, register_scheme, write_running


def coordinatewise(rows: bnstats.ClientStats, aggregate) -> tuple[torch.Tensor, torch.Tensor]:
    """The submitted running means and running variances, each aggregated coordinate-wise."""
    return aggregate(rows.mean), aggregate(rows.var)


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

    def bn_pass(self, step, channel):
        return BNPass(mode="client", record=True)

    def server_round(self, layers, steps, channel, round):
        like = dict(dtype=layers[0].running_mean.dtype, device=layers[0].running_mean.device)
        momentum = torch.cat([torch.full((layer.num_features,), layer.momentum, **like) for layer in layers])
        running_mean = torch.cat([layer.running_mean for layer in layers])
        running_var = torch.cat([layer.running_var for layer in layers])
        for bn in steps:
            batch_mean = torch.cat([s.mean for s in bn.clients], dim=1)
            batch_var = torch.cat([bnstats.unbiased(s.var, s.count[:, None]) for s in bn.clients], dim=1)
            running_mean = (1 - momentum) * running_mean + momentum * batch_mean
            running_var = (1 - momentum) * running_var + momentum * batch_var
        mean, var = channel.aggregate(bnstats.ClientStats(running_mean, running_var, steps[0].clients[0].count),
                                      noop="mean", merge=coordinatewise)
        negative = var < 0
        write_running(layers, mean, torch.where(negative, torch.zeros_like(var), var))
        return int(negative.sum())


__all__ = ["Naive"]
