"""One training pass of the federated BN layers: what they do (an immutable BNPass) and what they return.

A pass is opened with the `run_bn_pass(layers, spec)` context manager, like `torch.no_grad`: it hands every
layer the same frozen `BNPass` and a fresh `PassRecord`, and puts back what the layers had on exit,
also when the pass raises. Inside it each FederatedBatchNorm normalizes as `spec.mode` says and returns
its per-client statistics (and, for FedTAN, the merged statistics; for per-client gradients, x̂) into
the record, which the caller reads after the forward. Nothing a pass sets survives it.

Modes (DESIGN.md §4):

- ``"client"``: every client its own batch statistics, gradients flowing through them (naive BN,
  FixBN before T*);
- ``"union"``: the exact statistics of the union of the clients' batches, gradients through the
  merge (centralized reference);
- ``"global"``: the server's running statistics held in the layer's buffers, as constants (FBN,
  FixBN after T*);
- ``"sync"``: FedTAN's layer-wise synchronization: the per-client statistics go through
  `spec.sync` (the attacked submission and the server's robust merge of THIS layer) and every client
  normalizes with the returned global batch statistics, gradients flowing through the aggregate;
- ``"hybrid"``: Hybrid BN's (1 − a)·running + a·batch per client (HybridBatchNorm only).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Sequence

import torch

from byzbn.stats import ClientStats, GlobalStats

MODES = ("client", "union", "global", "sync", "hybrid")
STATS_BACKENDS = ("kernel", "torch")


@dataclass(frozen=True)
class BNPass:
    """What every federated BN layer does in one training pass.

    mode: see the module docstring; clients: how many equal client batches the stacked batch holds;
    backend: "kernel" (byzbn.kernels' fused statistics) or "torch" (differentiable torch ops: the
    per-client loop reference and the vmap pass use it); record: return the per-client statistics;
    keep_normalized: also return x̂ (per-client gradients of the affine parameters need it);
    sync: mode "sync", ClientStats (h rows, with grad) -> GlobalStats.
    """

    mode: str = "client"
    clients: int = 1
    backend: str = "kernel"
    record: bool = False
    keep_normalized: bool = False
    sync: Optional[Callable[[ClientStats], GlobalStats]] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.backend not in STATS_BACKENDS:
            raise ValueError(f"backend must be one of {list(STATS_BACKENDS)}, got {self.backend!r}")
        if isinstance(self.clients, bool) or not isinstance(self.clients, int) or self.clients < 1:
            raise ValueError(f"clients must be an int >= 1, got {self.clients!r}")
        if self.sync is not None and not callable(self.sync):
            raise ValueError(f"sync must be a callable ClientStats -> GlobalStats, got {type(self.sync).__name__}")
        if self.mode == "sync" and self.sync is None:
            raise ValueError("mode 'sync' needs the scheme's sync callable (BNPass(mode='sync', sync=...))")

    def replace(self, **changes) -> "BNPass":
        return replace(self, **changes)


@dataclass(frozen=True)
class LayerOutput:
    """What one layer returned in a pass: detached per-client statistics [clients, C] and extras."""

    mean: Optional[torch.Tensor]            # None when the pass did not ask for statistics
    var: Optional[torch.Tensor]
    count: int                              # elements per channel per client
    merged: Optional[GlobalStats] = None    # mode "sync": this layer's merged statistics
    normalized: Optional[torch.Tensor] = None  # keep_normalized: x̂ [clients, B, C, *]

    def client_stats(self, clients: int) -> ClientStats:
        count = torch.full((clients,), self.count, dtype=torch.int64, device=self.mean.device)
        return ClientStats(self.mean.reshape(clients, -1), self.var.reshape(clients, -1), count)


@dataclass(frozen=True)
class BNStats:
    """The statistics a pass produced, per BN layer in forward order: what the server update needs."""

    clients: list[ClientStats]
    merged: Optional[list[GlobalStats]] = None


class PassRecord:
    """Filled by the layers during a pass (one LayerOutput each); read by the caller afterwards."""

    def __init__(self, layers: Sequence[torch.nn.Module]):
        self._order = {id(layer): k for k, layer in enumerate(layers)}
        self._outputs: dict[int, LayerOutput] = {}

    def add(self, layer: torch.nn.Module, output: LayerOutput) -> None:
        if id(layer) in self._outputs:
            raise ValueError(f"a {type(layer).__name__} ran twice in one pass: open one run_bn_pass per forward")
        self._outputs[id(layer)] = output

    def outputs(self) -> list[LayerOutput]:
        """The layers' outputs in the order the layers were given to run_bn_pass (layers that did not run are left out)."""
        return [self._outputs[key] for key in sorted(self._outputs, key=self._order.__getitem__)]

    def output(self, layer: torch.nn.Module) -> Optional[LayerOutput]:
        return self._outputs.get(id(layer))

    def bn_stats(self, clients: int) -> Optional[BNStats]:
        """The per-layer ClientStats of `clients` rows (None when nothing was recorded)."""
        outputs = self.outputs()
        if not outputs or any(o.mean is None for o in outputs):
            return None
        merged = [o.merged for o in outputs]
        return BNStats([o.client_stats(clients) for o in outputs],
                       merged if all(m is not None for m in merged) else None)


@contextmanager
def run_bn_pass(layers: Sequence[torch.nn.Module], spec: BNPass) -> Iterator[PassRecord]:
    """Run the enclosed forward with every layer doing `spec`; yields the PassRecord the layers fill.

    Restores each layer's previous pass on exit, whatever happens inside (passes nest: the vmap'd
    per-client function opens its own).
    """
    if not isinstance(spec, BNPass):
        raise ValueError(f"spec must be a BNPass, got {type(spec).__name__}")
    layers = list(layers)
    record = PassRecord(layers)
    saved = [layer.active_pass for layer in layers]
    try:
        for layer in layers:
            layer.active_pass = (spec, record)
        yield record
    finally:
        for layer, previous in zip(layers, saved):
            layer.active_pass = previous


__all__ = ["MODES", "STATS_BACKENDS", "BNPass", "LayerOutput", "BNStats", "PassRecord", "run_bn_pass"]
