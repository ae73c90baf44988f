"""label-flip: data poisoning. The Byzantine clients hold a data share like the honest clients and train
on flipped labels y → C − 1 − y; whatever they submit is what that training genuinely produces.

On the gradient channel (FedAvg: the model updates) their rows are their own momentums (updates) from
the poisoned labels; on the statistics channel they send their genuine BN statistics, which labels do
not touch — a stealthy attacker whose statistics rows look like one more non-IID client. The runner
gives such clients data (the partition then has n shares instead of h), flips their labels with
`poison`, and hands their computed rows to the attack in `AttackContext.own_rows`; the statistics
channel submits all n clients' genuine rows as they are (byzbn.schemes.StatsChannel).
"""
from __future__ import annotations

import torch

from byzbn.attacks.context import AttackContext
from byzbn.attacks.registry import Attack, register_attack


def poisons_data(attack) -> bool:
    """Whether `attack` is a data-poisoning attack: its Byzantine clients hold data and train on it."""
    return bool(getattr(attack, "poisons_data", False))


@register_attack("label-flip")
class LabelFlip(Attack):
    """Byzantine clients train on labels C − 1 − y (needs a runner that gives them data: byzbn.fl)."""

    poisons_data = True

    def __init__(self):
        pass

    @staticmethod
    def poison(y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The labels the Byzantine clients train on: C − 1 − y (a new tensor)."""
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes - 1}] to be flipped, got [{int(y.min())}, {int(y.max())}]")
        return (num_classes - 1) - y

    def rows(self, honest: torch.Tensor, context: AttackContext) -> torch.Tensor:
        if context.own_rows is None:
            raise ValueError("attack 'label-flip' poisons the Byzantine clients' data: it needs the rows they computed "
                             "(AttackContext.own_rows), which byzbn's runner provides when they hold data")
        return context.own_rows.to(dtype=honest.dtype, device=honest.device).clone()


__all__ = ["poisons_data", "LabelFlip"]
