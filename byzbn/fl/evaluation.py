"""The server's view of a global model: its test accuracy and loss, and whether its state is broken.

Shared by the in-process runner (byzbn.fl.dsgd's Federation) and the Flower strategy (byzbn.flower),
so both engines score a model the same way: eval mode, i.e. every BN layer normalizes with the
server's running statistics.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean NLL) of `model` in eval mode on (x, y); the model is left in training mode.

    Predictions from non-finite outputs count as wrong; the loss is then NaN.
    """
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(x), batch_size):
        out = model(x[start: start + batch_size])
        target = y[start: start + batch_size]
        ok = torch.isfinite(out).all(dim=1)
        correct += int(((out.argmax(dim=1) == target) & ok).sum())
        loss_sum += float(F.cross_entropy(out, target, reduction="sum"))
    model.train()
    return correct / len(x), loss_sum / len(x)


def non_finite_state(model: nn.Module) -> Optional[str]:
    """Why the model's state is broken (non-finite parameters or running statistics), or None."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "non-finite parameters"
    if not all(bool(torch.isfinite(b).all()) for b in model.buffers() if b.is_floating_point()):
        return "non-finite running statistics"
    return None


__all__ = ["evaluate_model", "non_finite_state"]
