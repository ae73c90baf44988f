"""GroupNorm in place of BN: the baseline that exchanges no statistics."""
from __future__ import annotations

from torch import nn

from byzbn._checks import check_int
from byzbn.nn import BNPass
from byzbn.schemes.base import Scheme, register_scheme

# Hsieh et al. 2020 ("The Non-IID Data Quagmire of Decentralized Machine Learning") replace BN with
# GroupNorm of 2 groups; FixBN's comparison follows them.
DEFAULT_GROUPS = 2


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

    def bn_pass(self, step, channel):
        return BNPass()  # the model has no federated BN layer: nothing reads it

    def server_round(self, layers, steps, channel, round):
        return 0


__all__ = ["DEFAULT_GROUPS", "GroupNormScheme"]
