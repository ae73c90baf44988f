"""FixBN: naive BN until T*, then the frozen global statistics."""
from __future__ import annotations

from byzbn.nn import BNPass
from byzbn.schemes.base import register_scheme
from byzbn.schemes.naive import Naive

DEFAULT_FIXBN_FREEZE = 0.5  # FixBN's T* = half of training (the paper's exploration stage)


@register_scheme("fixbn")
class FixBN(Naive):
    """FixBN: naive BN for the first T* = round(freeze · steps) steps, then the frozen global statistics.

    After T* the layers normalize with the server's running statistics as constants, clients submit
    no statistics (nothing to attack there) and the server's statistics stay fixed. Under FedAvg steps
    are rounds: T* is a round, and every local step of a round is in the same phase.
    """

    def __init__(self, steps: int, freeze: float = DEFAULT_FIXBN_FREEZE):
        super().__init__(steps)
        if isinstance(freeze, bool) or not isinstance(freeze, (int, float)) or not 0.0 <= freeze <= 1.0:
            raise ValueError(f"freeze must be a fraction of the steps in [0, 1], got {freeze!r}")
        self.freeze = float(freeze)
        self.freeze_step = round(self.freeze * self.steps)

    def submits_stats(self, step):
        return step < self.freeze_step

    def bn_pass(self, step, channel):
        return super().bn_pass(step, channel) if self.submits_stats(step) else BNPass(mode="global")

    def server_round(self, layers, steps, channel, round):
        return super().server_round(layers, steps, channel, round) if self.submits_stats(round) else 0


__all__ = ["DEFAULT_FIXBN_FREEZE", "FixBN"]
