"""Validate, then aggregate: every client reply is checked against the round's contract first.

The server trusts no node. A reply counts only if it holds exactly what an honest client of the
round sends (byzbn.flower.client.local_round):

- it comes from the node of one client of the round (the sender's node id decides who it is: a client
  index in the reply is never trusted, and one that disagrees with the sender's is a rejection);
- an update with exactly the model's parameters and shapes ("update");
- per local step whose statistics travel, per BN layer, exactly one row of each field: mean and var
  [1, C] floating, count [1] integer within [1, the client's data share's elements per channel]
  ("bn-stats", nothing else in it);
- metrics with E training losses ("metrics").

Values inside those shapes (a NaN mean, a huge update) are a Byzantine client's right: the robust rule
deals with them. A reply that fails — or an error reply, or no reply at all — is replaced by what a
SILENT client gives: a zero update (the model stays where it is) and, per recorded step, the server's
own running statistics as the row, claiming an honest client's count. The defense then sees one more
Byzantine row; with at most f such rows in all, its guarantee holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import nn

from byzbn.flower import records
from byzbn.nn import federated_bn_layers
from byzbn.stats import ClientStats

FIELDS = ("mean", "var", "count")
REJECTED = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError)


class RejectedReply(ValueError):
    """A reply that breaks the round's contract (the message says how)."""


@dataclass(frozen=True)
class Contract:
    """What every reply of a round must hold (see the module docstring)."""

    layers: tuple          # (BN layer name, channels), in the order the server merges them
    local_steps: int       # E: the training losses a reply carries
    recorded: tuple        # the local steps whose statistics travel
    counts: tuple          # per layer: the count an honest client's batch gives (a silent client's claim)
    max_counts: tuple      # per layer: the most elements per channel a client's data share holds


@dataclass(frozen=True)
class Reply:
    """One client's checked reply: update [d], per local step its one-row ClientStats per layer (or None), losses."""

    update: torch.Tensor
    stats: tuple
    losses: tuple
    silent: bool = False


def elements_per_sample(model: nn.Module, input_shape: tuple) -> list[int]:
    """Per federated BN layer, the elements per channel one input sample gives (its spatial size)."""
    layers = federated_bn_layers(model)
    sizes: dict = {}

    def measure(module, args) -> None:  # a pre-hook that returns something would replace the input
        sizes.setdefault(module, math.prod(args[0].shape[2:]))

    hooks = [layer.register_forward_pre_hook(measure) for layer in layers]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=next(model.parameters()).dtype))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return [int(sizes[layer]) for layer in layers]


def _array(record: ArrayRecord, key: str) -> torch.Tensor:
    return torch.from_numpy(np.array(record[key].numpy()))


def _check_stats(record, contract: Contract, dtype: torch.dtype) -> tuple:
    expected = {f"step{e}/{name}/{field}" for e in contract.recorded for name, _ in contract.layers for field in FIELDS}
    if not expected:
        if record is not None and len(record.keys()):
            raise RejectedReply("statistics where the round records none")
        return (None,) * contract.local_steps
    if not isinstance(record, ArrayRecord):
        raise RejectedReply("no statistics record")
    keys = set(record.keys())
    if keys != expected:
        extra, missing = sorted(keys - expected), sorted(expected - keys)
        raise RejectedReply(f"statistics entries differ from the round's: extra {extra[:3]}, missing {missing[:3]}")
    steps: list[Optional[list]] = [None] * contract.local_steps
    for e in contract.recorded:
        rows = []
        for (name, width), most in zip(contract.layers, contract.max_counts):
            mean, var, count = (_array(record, f"step{e}/{name}/{field}") for field in FIELDS)
            for field, t in (("mean", mean), ("var", var)):
                if not t.is_floating_point() or tuple(t.shape) != (1, width):
                    raise RejectedReply(f"step {e} layer {name!r} {field}: {t.dtype} {tuple(t.shape)}, "
                                        f"expected one floating row of {width}")
            integer = not (count.is_floating_point() or count.is_complex() or count.dtype == torch.bool)
            if not integer or tuple(count.shape) != (1,):
                raise RejectedReply(f"step {e} layer {name!r} count: {count.dtype} {tuple(count.shape)}, "
                                    f"expected one integer")
            if not 1 <= int(count[0]) <= most:
                raise RejectedReply(f"step {e} layer {name!r} count {int(count[0])} outside [1, {most}]")
            rows.append(ClientStats(mean.to(dtype), var.to(dtype), count.to(torch.int64)))
        steps[e] = rows
    return tuple(steps)


def _check_losses(metrics, contract: Contract, client: int) -> tuple:
    if not isinstance(metrics, MetricRecord):
        raise RejectedReply("no metrics record")
    if "client" in metrics and metrics["client"] != client:
        raise RejectedReply(f"claims client index {metrics['client']!r}, its node is client {client}'s")
    losses = metrics.get("train-loss")
    if not isinstance(losses, list) or len(losses) != contract.local_steps:
        got = len(losses) if isinstance(losses, list) else type(losses).__name__
        raise RejectedReply(f"train-loss must list {contract.local_steps} losses, got {got}")
    return tuple(float(v) for v in losses)


def check_reply(content, contract: Contract, model: nn.Module, client: int) -> Reply:
    """The reply of `client` checked against the round's contract; RejectedReply says what breaks it."""
    if not isinstance(content, RecordDict):
        raise RejectedReply(f"content is a {type(content).__name__}, not a RecordDict")
    update = content.get(records.UPDATE)
    if not isinstance(update, ArrayRecord):
        raise RejectedReply("no update record")
    try:
        flat = records.record_flat(update, model)
    except REJECTED as e:
        raise RejectedReply(f"update: {e}") from None
    dtype = next(model.parameters()).dtype
    try:
        stats = _check_stats(content.get(records.STATS), contract, dtype)
    except RejectedReply:
        raise
    except REJECTED as e:
        raise RejectedReply(f"statistics: {e}") from None
    return Reply(flat, stats, _check_losses(content.get(records.METRICS), contract, client))


def silent_reply(contract: Contract, model: nn.Module) -> Reply:
    """What a silent client gives: a zero update and, per recorded step, the server's running statistics."""
    layers = federated_bn_layers(model)
    d = sum(p.numel() for p in model.parameters())
    dtype = next(model.parameters()).dtype
    rows = [ClientStats(layer.running_mean.detach().to(dtype).view(1, -1).clone(),
                        layer.running_var.detach().to(dtype).view(1, -1).clone(),
                        torch.tensor([count], dtype=torch.int64))
            for layer, count in zip(layers, contract.counts)]
    stats = tuple(rows if e in contract.recorded else None for e in range(contract.local_steps))
    return Reply(torch.zeros(d, dtype=dtype), stats, (math.nan,) * contract.local_steps, silent=True)


def check_round(contents: dict, clients: list[int], contract: Contract, model: nn.Module,
                rejected: Optional[dict] = None) -> tuple[dict, dict]:
    """({client: Reply} for every client of `clients`, {client or node: why its reply was rejected}).

    contents: {client: reply content} (the clients' replies mapped by sender); rejected: reasons already
    found (an error reply, a reply from a node outside the round). A client without an accepted reply
    gets a silent reply.
    """
    rejected = dict(rejected or {})
    replies = {}
    for c in clients:
        if c not in rejected and c not in contents:
            rejected[c] = "no reply"
        if c in rejected:
            replies[c] = silent_reply(contract, model)
            continue
        try:
            replies[c] = check_reply(contents[c], contract, model, c)
        except RejectedReply as e:
            rejected[c] = str(e)
            replies[c] = silent_reply(contract, model)
    return replies, rejected


__all__ = ["FIELDS", "RejectedReply", "Contract", "Reply", "elements_per_sample", "check_reply", "silent_reply",
           "check_round"]
