"""Hybrid BN (HBN): clients normalize with (1 − a)·global + a·batch, a learnable per channel."""
from __future__ import annotations

from torch import nn

from byzbn.nn import BNPass, HybridBatchNorm
from byzbn.schemes.base import register_scheme
from byzbn.schemes.fbn import FederatedBN


@register_scheme("hbn")
class HybridBN(FederatedBN):
    """Hybrid BN: clients normalize with (1 − a)·global + a·batch, a = sigmoid(d) learnable per channel.

    d starts at 0 (a = 1/2). The global statistics are the server's running statistics, updated as
    FBN's from the robust (with the mean: exact, unbiased) merge of the clients' batch statistics,
    which clients submit every step; evaluation uses the global statistics.
    """

    def make_norm(self, num_features: int) -> nn.Module:
        return HybridBatchNorm(num_features)

    def bn_pass(self, step, channel):
        return BNPass(mode="hybrid", record=True)


__all__ = ["HybridBN"]
