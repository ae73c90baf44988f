"""The centralized reference: BN on the union of the honest batches, one machine, no attack."""
from __future__ import annotations

from byzbn import stats as bnstats
from byzbn.nn import BNPass
from byzbn.schemes.base import Scheme, register_scheme, update_running


@register_scheme("centralized")
class Centralized(Scheme):
    """Reference upper bound: BN on the union of the honest batches, exact running statistics, no attack."""

    attackable = False
    couples_clients = True

    def exchanges(self, step, num_bn_layers):
        return 0  # one machine holds the union: nothing is communicated

    def bn_pass(self, step, channel):
        return BNPass(mode="union", record=True)

    def server_round(self, layers, steps, channel, round):
        if len(steps) != 1:
            raise ValueError(f"scheme 'centralized' is the one-machine reference: it has no FedAvg round of "
                             f"{len(steps)} local steps")
        update_running(layers, [bnstats.merge_stats(s) for s in steps[0].clients])
        return 0


__all__ = ["Centralized"]
