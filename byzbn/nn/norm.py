"""The federated batch-norm layer: one module that sees the stacked batch of the clients (DESIGN.md §2, §4).

The runner stacks the client batches into one tensor [clients·B, C, *spatial] and runs ONE
forward/backward for the whole federation. Each `FederatedBatchNorm` views its input as
[clients, B, C, *spatial] and computes per-client statistics with `byzbn.kernels.client_stats` (Triton
on CUDA). What it normalizes with, and what it returns besides its output, is the BNPass of the pass it
runs in (byzbn.nn.bn_passes); outside any pass it is plain per-batch BN. In eval mode it is plain BN with
the server's running statistics: the model the server evaluates.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from byzbn import stats as bnstats
from byzbn.nn.bn_passes import BNPass, LayerOutput, PassRecord
from byzbn.nn.functional import KernelClientBatchNorm, client_moments

class FederatedBatchNorm(nn.Module):
    """Batch norm over [N, C, *spatial] for a federation whose client batches are stacked along N.

    Parameters (affine weight/bias) and buffers (running_mean/var: the server's global statistics)
    have BatchNorm2d's names and meaning (running_var tracks the unbiased variance); there is no
    num_batches_tracked, as the momentum is fixed. `active_pass` is set only by byzbn.nn.run_bn_pass.
    """

    default_pass: ClassVar[BNPass] = BNPass()  # what the layer does in training mode outside any pass

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be an int >= 1, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.active_pass: Optional[tuple[BNPass, PassRecord]] = None

    @property
    def current_pass(self) -> BNPass:
        """The BNPass this layer runs now (plain per-batch BN outside any pass)."""
        return self.default_pass if self.active_pass is None else self.active_pass[0]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"input must have shape [N, {self.num_features}, *spatial], got {tuple(x.shape)}")
        if not self.training:
            return self._with_running(x)
        spec, record = (self.default_pass, None) if self.active_pass is None else self.active_pass
        y, output = self.normalize(x, spec)
        if record is not None:
            record.add(self, output)
        return y

    def normalize(self, x: torch.Tensor, spec: BNPass) -> tuple[torch.Tensor, LayerOutput]:
        """The training-mode output for x [clients·B, C, *] under `spec`, and what the layer returns."""
        if x.shape[0] % spec.clients:
            raise ValueError(f"the batch of {x.shape[0]} rows does not split into clients={spec.clients} equal batches")
        xs = x.reshape(spec.clients, x.shape[0] // spec.clients, *x.shape[1:])
        count = xs.numel() // (spec.clients * self.num_features)
        merged = None
        if spec.mode == "global":
            mean = var = None
            if spec.record:
                with torch.no_grad():
                    mean, var = client_moments(xs.detach(), spec.backend)
            if not spec.keep_normalized:
                return self._with_running(x), LayerOutput(mean, var, count)
            norm_mean, norm_var = self.running_mean.unsqueeze(0), self.running_var.unsqueeze(0)
        elif spec.mode == "client" and spec.backend == "kernel" and not spec.keep_normalized:
            y, mean, var = KernelClientBatchNorm.apply(xs, self.weight, self.bias, self.eps)
            return y.view_as(x), LayerOutput(mean, var, count)
        else:
            mean, var = client_moments(xs, spec.backend)
            norm_mean, norm_var = mean, var
            if spec.mode == "hybrid":
                norm_mean, norm_var = self._hybrid(mean, var)
            elif spec.mode in ("union", "sync"):
                rows = bnstats.ClientStats(mean, var, torch.full((spec.clients,), count, dtype=torch.int64,
                                                                 device=x.device))
                g = bnstats.merge_stats(rows) if spec.mode == "union" else spec.sync(rows)
                norm_mean, norm_var = g.mean.unsqueeze(0), g.var.unsqueeze(0)
                if spec.mode == "sync":
                    merged = bnstats.GlobalStats(g.mean.detach(), g.var.detach(), g.var_unbiased.detach(),
                                                 g.count, g.clamped)
            mean, var = mean.detach(), var.detach()
        shape = (norm_mean.shape[0], 1, self.num_features) + (1,) * (x.dim() - 2)
        normalized = (xs - norm_mean.view(shape)) * torch.rsqrt(norm_var + self.eps).view(shape)
        y = normalized * self.weight.view(shape[1:]) + self.bias.view(shape[1:])
        kept = normalized.detach() if spec.keep_normalized else None
        return y.view_as(x), LayerOutput(mean, var, count, merged, kept)

    def _with_running(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)

    def _hybrid(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("mode 'hybrid' needs a HybridBatchNorm (this layer has no mixing parameter)")


class HybridBatchNorm(FederatedBatchNorm):
    """Hybrid BN (HBN): each client normalizes with (1 − a)·global + a·batch, for the mean and the variance.

    a = sigmoid(mix_logit) per channel, mix_logit a learnable parameter initialised to 0 (a = 1/2);
    "global" is the server's running statistics (buffers, constants in the forward: running_var is the
    unbiased estimate, mixed as is with the client's biased batch variance), "batch" the client's own
    statistics with gradients flowing through them. a → 1 is naive BN's normalization, a → 0 FBN's.
    Evaluation uses the running statistics only, like every scheme. The other modes behave as in
    FederatedBatchNorm (mix_logit then gets no gradient).
    """

    default_pass: ClassVar[BNPass] = BNPass(mode="hybrid")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps, momentum)
        self.mix_logit = nn.Parameter(torch.zeros(num_features))

    def _hybrid(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.sigmoid(self.mix_logit)
        return (1 - a) * self.running_mean + a * mean, (1 - a) * self.running_var + a * var


# Attribute a model built by make_cnn or byzbn.nn.federate carries: the qualified names of its
# normalization modules in forward order (registration order need not be the order a forward runs them).
NORM_LAYER_NAMES_ATTR = "norm_layer_names"


def federated_bn_layers(model: nn.Module) -> list[FederatedBatchNorm]:
    """The model's FederatedBatchNorm layers in forward order.

    The order is the model's `norm_layer_names` (make_cnn and byzbn.nn.federate record it; looked up by
    name, so a layer swapped in later is the one returned), else registration order. Every per-layer
    list a run keeps (statistics rows, the concatenated submission, the running statistics) follows it.
    """
    names = getattr(model, NORM_LAYER_NAMES_ATTR, None)
    modules = model.modules() if names is None else (model.get_submodule(name) for name in names)
    return [m for m in modules if isinstance(m, FederatedBatchNorm)]


__all__ = ["NORM_LAYER_NAMES_ATTR", "FederatedBatchNorm", "HybridBatchNorm", "federated_bn_layers"]
