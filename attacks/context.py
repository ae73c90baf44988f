"""What an attack is told about the run it attacks (DESIGN.md §9): one immutable value per step and channel.

    context = AttackContext(n=10, f=3, defense=make_defense("median", 3, pre="nnm"),
                            generator=gen, step=step, channel="stats")   # gen: seeded per (seed, step, channel)
    rows = attack(honest, context)          # honest [n − f, d] -> Byzantine rows [f, d]

The runner builds one context per step and channel with a generator seeded from (run seed, step,
channel), so a random attack draws fresh noise every step and channel, and the same noise in two runs
with the same seed. model, batches and field are there for adaptive attacks that need them (bn-adaptive);
the other built-in attacks use n, f, the defense (optimal attacks) and the generator (gaussian).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from byzbn._checks import check_f, check_int

ROW_FIELDS = ("", "mean", "var")  # which BN field the rows are; "" when they are not BN statistics
DefenseFn = Callable[[torch.Tensor], torch.Tensor]  # the server's aggregation: [n, d] -> [d]
AttackFn = Callable[[torch.Tensor, "AttackContext"], torch.Tensor]  # honest [h, d], context -> [f, d]


@dataclass(frozen=True)
class AttackContext:
    """n clients, f of them Byzantine, attacking the server's `defense` at `step` on `channel`.

    generator: where random attacks draw from (None: an attack derives its own, reproducible draw);
    model / batches: for adaptive attacks (None when the runner does not provide them);
    field: on the statistics channel, which field the honest rows hold ("mean" or "var": attack_stats
    calls the attack once per field, each row being all BN layers' channels concatenated); "" otherwise.
    Fields are validated here, so every attack sees a consistent context.
    """

    n: int
    f: int
    defense: Optional[DefenseFn] = None
    generator: Optional[torch.Generator] = None
    step: int = 0
    channel: str = ""
    model: Optional[torch.nn.Module] = None
    batches: Optional[tuple] = None
    field: str = ""
    # Data-poisoning attacks (label-flip): the Byzantine clients hold data, train on it their own way,
    # and these are the [f, d] rows they computed for this channel; None when they hold no data.
    own_rows: Optional[torch.Tensor] = None

    def __post_init__(self):
        check_int("n", self.n, 1)
        check_f(self.f, self.n)
        if self.defense is not None and not callable(self.defense):
            raise ValueError(f"defense must be None or a callable [n, d] -> [d], got {type(self.defense).__name__}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise ValueError(f"generator must be None or a torch.Generator, got {type(self.generator).__name__}")
        check_int("step", self.step, 0)
        if not isinstance(self.channel, str):
            raise ValueError(f"channel must be a str, got {type(self.channel).__name__}")
        if self.model is not None and not isinstance(self.model, torch.nn.Module):
            raise ValueError(f"model must be None or a torch.nn.Module, got {type(self.model).__name__}")
        if self.batches is not None and not isinstance(self.batches, tuple):
            raise ValueError(f"batches must be None or a tuple, got {type(self.batches).__name__}")
        if self.own_rows is not None and (not isinstance(self.own_rows, torch.Tensor) or self.own_rows.dim() != 2
                                          or self.own_rows.shape[0] != self.f):
            got = tuple(self.own_rows.shape) if isinstance(self.own_rows, torch.Tensor) else type(self.own_rows).__name__
            raise ValueError(f"own_rows must be None or a tensor [f={self.f}, d], got {got}")
        if not isinstance(self.field, str) or self.field not in ROW_FIELDS:
            raise ValueError(f"field must be one of {list(ROW_FIELDS)}, got {self.field!r}")

    @property
    def h(self) -> int:
        """The number of honest clients, n − f."""
        return self.n - self.f


__all__ = ["AttackContext", "AttackFn", "DefenseFn", "ROW_FIELDS"]
