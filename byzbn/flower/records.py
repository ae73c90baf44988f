"""What travels between byzbn's ServerApp and ClientApp, as Flower records (byzbn ↔ flwr.app types).

Weights and BN statistics travel apart, so that no weight aggregator ever sees a BN buffer:

    server → client   "arrays"       ArrayRecord: the model's parameters, by name (no buffer)
                      "bn-running"   ArrayRecord: every BN layer's running_mean / running_var (the
                                     server's global statistics, broadcast)
                      "config"       ConfigRecord: what the client needs to rebuild its part (byzbn.flower.spec)
    client → server   "update"       ArrayRecord: the model update Δθ_i = θ_i − θ, by parameter name
                      "bn-stats"     ArrayRecord: per local step e and BN layer, the client's batch mean,
                                     biased variance and element count ("step{e}/{layer}/mean|var|count")
                      "metrics"      MetricRecord: client index, local losses, num-examples

Transport is lossless (float32 arrays as they are), so a value computed by a client arrives bit for bit.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from byzbn.nn import BNStats, federated_bn_layers
from byzbn.stats import ClientStats

PARAMETERS, RUNNING, CONFIG = "arrays", "bn-running", "config"
UPDATE, STATS, METRICS = "update", "bn-stats", "metrics"
RUNNING_BUFFERS = ("running_mean", "running_var")


def bn_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's federated BN layers, in the order the server merges them (federated_bn_layers)."""
    names = {id(m): name for name, m in model.named_modules()}
    return [names[id(layer)] for layer in federated_bn_layers(model)]


def _array(t: torch.Tensor) -> Array:
    return Array(np.ascontiguousarray(t.detach().cpu().numpy()))


def _tensor(a: Array) -> torch.Tensor:
    return torch.from_numpy(np.array(a.numpy()))  # a writable copy


def parameters_record(model: nn.Module) -> ArrayRecord:
    """The model's parameters by name (its BN running statistics are not parameters: they are not in it)."""
    record = ArrayRecord()
    for name, p in model.named_parameters():
        record[name] = _array(p)
    return record


def flat_record(flat: torch.Tensor, model: nn.Module) -> ArrayRecord:
    """A flat vector in model.parameters() order, as an ArrayRecord by parameter name and shape."""
    record, offset = ArrayRecord(), 0
    for name, p in model.named_parameters():
        record[name] = _array(flat[offset: offset + p.numel()].view_as(p))
        offset += p.numel()
    return record


def record_flat(record: ArrayRecord, model: nn.Module) -> torch.Tensor:
    """Inverse of flat_record: the record's arrays concatenated in model.parameters() order.

    The record must hold exactly the model's parameter names with their shapes (a BN buffer, or a
    missing parameter, is a ValueError).
    """
    names = [name for name, _ in model.named_parameters()]
    if set(record.keys()) != set(names):
        extra, missing = sorted(set(record.keys()) - set(names)), sorted(set(names) - set(record.keys()))
        raise ValueError(f"the record must hold exactly the model's parameters; extra {extra}, missing {missing}")
    parts = []
    for name, p in model.named_parameters():
        t = _tensor(record[name])
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"parameter {name!r} has shape {tuple(t.shape)} in the record, {tuple(p.shape)} in the model")
        parts.append(t.reshape(-1).to(p.dtype))
    return torch.cat(parts) if parts else torch.zeros(0)


def tensor_record(t: torch.Tensor) -> ArrayRecord:
    """One tensor as an ArrayRecord (a node's own state, e.g. its momentum)."""
    return ArrayRecord({"value": _array(t)})


def record_tensor(record: ArrayRecord) -> torch.Tensor:
    """Inverse of tensor_record (a writable copy)."""
    return _tensor(record["value"])


def running_record(model: nn.Module) -> ArrayRecord:
    """Every federated BN layer's running_mean and running_var ("{layer}.running_mean", …)."""
    record = ArrayRecord()
    modules = dict(model.named_modules())
    for name in bn_layer_names(model):
        for buffer in RUNNING_BUFFERS:
            record[f"{name}.{buffer}"] = _array(getattr(modules[name], buffer))
    return record


@torch.no_grad()
def load_running(model: nn.Module, record: ArrayRecord) -> None:
    """Set every federated BN layer's running statistics from running_record's layout."""
    modules = dict(model.named_modules())
    for name in bn_layer_names(model):
        for buffer in RUNNING_BUFFERS:
            getattr(modules[name], buffer).copy_(_tensor(record[f"{name}.{buffer}"]))


def stats_record(recorded: Sequence[Optional[BNStats]], layer_names: Sequence[str]) -> ArrayRecord:
    """One client's per-local-step BN statistics (one-row BNStats, None for a step that recorded nothing)."""
    record = ArrayRecord()
    for e, bn in enumerate(recorded):
        if bn is None:
            continue
        for name, s in zip(layer_names, bn.clients):
            record[f"step{e}/{name}/mean"] = _array(s.mean)
            record[f"step{e}/{name}/var"] = _array(s.var)
            record[f"step{e}/{name}/count"] = _array(s.count)
    return record


def record_stats(record: Optional[ArrayRecord], local_steps: int,
                 layer_names: Sequence[str]) -> list[Optional[list[ClientStats]]]:
    """Inverse of stats_record: per local step, the client's one-row ClientStats per layer (or None)."""
    out: list[Optional[list[ClientStats]]] = []
    for e in range(local_steps):
        if record is None or not layer_names or f"step{e}/{layer_names[0]}/mean" not in record:
            out.append(None)
            continue
        out.append([ClientStats(_tensor(record[f"step{e}/{name}/mean"]), _tensor(record[f"step{e}/{name}/var"]),
                                _tensor(record[f"step{e}/{name}/count"])) for name in layer_names])
    return out


__all__ = ["PARAMETERS", "RUNNING", "CONFIG", "UPDATE", "STATS", "METRICS", "bn_layer_names", "parameters_record",
           "flat_record", "record_flat", "tensor_record", "record_tensor", "running_record", "load_running", "stats_record", "record_stats"]
