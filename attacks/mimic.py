"""Mimic (Karimireddy, He and Jaggi, ICLR 2022): every Byzantine client copies one honest client's row.

The rows are honest — no defense can tell them from the client they copy — but that client now counts
f + 1 times. Under non-IID data this over-weights one client's distribution: on gradients it slows
learning the other clients' data, on BN statistics it drags the merged mean and variance toward one
client's (and, through the total-variance merge, shrinks the between-client term of the others).

`epsilon` is ByzFL's name and meaning (byzfl.Mimic, v0.0.11): the 0-based index of the honest client
to copy, default 0, an int >= 0 that must be smaller than the number of honest rows h = n − f.
"""
from __future__ import annotations

from byzbn._checks import check_int
from byzbn.attacks.registry import Attack, register_attack, repeat_row


@register_attack("mimic")
class Mimic(Attack):
    """Every Byzantine row is a copy of honest row `epsilon` (0-based, < h = n − f)."""

    def __init__(self, epsilon: int = 0):
        self.epsilon = check_int("epsilon", epsilon, 0, why="the 0-based index of the honest client to copy")

    def rows(self, honest, context):
        if self.epsilon >= honest.shape[0]:
            raise ValueError(f"epsilon={self.epsilon} is out of range: valid [0, {honest.shape[0] - 1}] "
                             f"(the index of one of the h = n - f = {honest.shape[0]} honest clients)")
        return repeat_row(honest[self.epsilon], context.f)


__all__ = ["Mimic"]
