"""The federated batch-norm layer: one module that sees the stacked batch of h clients (DESIGN.md §2, §4).

The runner stacks the h honest clients' batches into one tensor [h·B, C, *spatial] and runs ONE
forward/backward for the whole federation. Each `FederatedBatchNorm` views its input as
[h, B, C, *spatial] and computes per-client statistics with `byzbn.kernels.client_stats` (Triton on
CUDA). What it normalizes with is the scheme's choice, set on the layer before each pass (see
`byzbn.schemes`):

- ``"client"``: every client its own batch statistics, gradients flowing through them (naive BN,
  FixBN before T*);
- ``"union"``: the exact statistics of the union of the h batches, i.e. the count-weighted merge of the
  per-client statistics (centralized reference), gradients flowing through the merge;
- ``"global"``: the server's running statistics held in the layer's buffers, as constants (FBN, FixBN
  after T*);
- ``"sync"``: FedTAN's layer-wise synchronization: the per-client statistics go through the layer's
  `sync` callable (set by the scheme: the attacked submission and the server's robust merge of THIS
  layer) and every client normalizes with the returned global batch statistics, gradients flowing
  through the aggregate; the detached result is kept in `sync_stats` for the server's running update;
- ``"hybrid"``: Hybrid BN's mix (1 − a)·running + a·batch per client, a = sigmoid(mix_logit), only in
  `HybridBatchNorm`.

When `record` is set, the layer appends the per-client (mean, biased var) [h, C] it computed, detached,
to `sink` (the list the runner collects after the pass). In eval mode it is plain BN with the server's
running statistics: the model the server evaluates.

The kernel has no autograd: where gradients must flow through the batch statistics, `KernelMoments`
wraps it with the analytic backward (dμ/dx = 1/m, dv/dx = 2(x − μ)/m per client and channel);
`KernelClientBatchNorm` fuses that backward with the normalization's for the "client" mode, the
hot path of naive BN and FixBN. `stats_backend="torch"` computes the same moments with differentiable torch ops instead: the per-client
loop reference uses it, and so does the vmap path (the kernel is not vmappable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from byzbn import stats as bnstats

MODES = ("client", "union", "global", "sync", "hybrid")
STATS_BACKENDS = ("kernel", "torch")


class KernelMoments(torch.autograd.Function):
    """Per-client mean and biased variance of xs [n, B, C, *] via the stats kernel, with their gradient."""

    @staticmethod
    def forward(ctx, xs: torch.Tensor):
        from byzbn.kernels import client_stats

        s = client_stats(xs)
        mean, var = s.mean.to(xs.dtype), s.var.to(xs.dtype)
        ctx.save_for_backward(xs, mean)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor):
        xs, mean = ctx.saved_tensors
        shape = _client_channel_shape(xs)
        per_client = xs.numel() // (xs.shape[0] * xs.shape[2])
        return (grad_mean.view(shape) + 2.0 * grad_var.view(shape) * (xs - mean.view(shape))) / per_client


class KernelClientBatchNorm(torch.autograd.Function):
    """Per-client batch norm of xs [n, B, C, *] with the kernel's statistics, fused (the naive-BN hot path).

    Forward: (μ_i, v_i) from the stats kernel, then y = x·s + t with s = w/√(v_i + eps), t = b − μ_i·s
    per client and channel. Backward: KernelMoments' analytic backward composed with the normalization's,
    i.e. the usual BN backward per client: with m elements per client and channel, S1 = Σ dy and
    S2 = Σ dy·(x − μ_i), dx = s·(dy − S1/m − (x − μ_i)·S2/(m·(v_i + eps))), dw = Σ_i S2/√(v_i + eps),
    db = Σ_i S1. A few passes over x instead of autograd's dozen. Also returns the detached (μ_i, v_i).
    """

    @staticmethod
    def forward(ctx, xs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        from byzbn.kernels import client_stats

        s = client_stats(xs)
        mean, var = s.mean.to(xs.dtype), s.var.to(xs.dtype)
        shape = _client_channel_shape(xs)
        rstd = torch.rsqrt(var + eps)
        scale = weight * rstd
        shift = bias - mean * scale
        ctx.save_for_backward(xs, mean, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return torch.addcmul(shift.view(shape), xs, scale.view(shape)), mean, var

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_mean, _grad_var):
        xs, mean, rstd, weight = ctx.saved_tensors
        shape = _client_channel_shape(xs)
        dims = (1,) + tuple(range(3, xs.dim()))
        m = xs.numel() // (xs.shape[0] * xs.shape[2])
        s1 = grad_out.sum(dim=dims)                                   # [n, C]
        s2 = (grad_out * xs).sum(dim=dims) - mean * s1                # Σ dy·(x − μ)
        scale = weight * rstd
        # dx = dy·scale + x·a + c, with a = −scale·rstd²·S2/m and c = −scale·S1/m − μ·a
        a = -scale * rstd * rstd * s2 / m
        c = -scale * s1 / m - mean * a
        grad_x = torch.addcmul(torch.addcmul(c.view(shape), xs, a.view(shape)), grad_out, scale.view(shape))
        return grad_x, (s2 * rstd).sum(dim=0), s1.sum(dim=0), None


def _client_channel_shape(xs: torch.Tensor) -> tuple[int, ...]:
    """The shape [n, 1, C, 1, ...] that broadcasts a per-client, per-channel [n, C] tensor over xs."""
    return (xs.shape[0], 1, xs.shape[2]) + (1,) * (xs.dim() - 3)


def client_moments(xs: torch.Tensor, backend: str = "kernel") -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-client (mean, biased var), each [n, C], of xs [n, B, C, *spatial]."""
    if backend == "kernel":
        return KernelMoments.apply(xs)
    if backend == "torch":
        var, mean = torch.var_mean(xs, dim=(1,) + tuple(range(3, xs.dim())), correction=0)
        return mean, var
    raise ValueError(f"backend must be one of {list(STATS_BACKENDS)}, got {backend!r}")


class FederatedBatchNorm(nn.Module):
    """Batch norm over [N, C, *spatial] for a federation whose h client batches are stacked along N.

    Parameters (affine weight/bias) and buffers (running_mean/var: the server's global statistics)
    have BatchNorm2d's names and meaning (running_var tracks the unbiased variance); there is no
    num_batches_tracked, as the momentum is fixed.
    """

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
        # Set by the scheme/runner before each training pass; plain attributes, not state.
        self.mode = "client"
        self.clients = 1
        self.record = False
        self.stats_backend = "kernel"
        self.sink: list | None = None
        self.sync = None            # mode "sync": ClientStats (h rows, with grad) -> GlobalStats, from the scheme
        self.sync_stats = None      # mode "sync": the last pass's merged statistics, detached
        self.keep_normalized = False
        self.normalized = None      # x̂ [clients, B, C, *] of the last pass, detached, when keep_normalized
        self.last_count = 0  # elements per channel per client in the last training pass

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, mode={self.mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"input must have shape [N, {self.num_features}, *spatial], got {tuple(x.shape)}")
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, momentum=0.0, eps=self.eps)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if x.shape[0] % self.clients:
            raise ValueError(f"the batch of {x.shape[0]} rows does not split into clients={self.clients} equal batches")
        xs = x.reshape(self.clients, x.shape[0] // self.clients, *x.shape[1:])
        self.last_count = xs.numel() // (self.clients * self.num_features)
        # keep_normalized (client_split_grads needs x̂) routes every mode through the explicit path below.
        if self.mode == "global":
            if self.record:
                with torch.no_grad():
                    self._record(*client_moments(xs.detach(), self.stats_backend))
            if not self.keep_normalized:
                return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                    training=False, momentum=0.0, eps=self.eps)
            mean, var = self.running_mean.unsqueeze(0), self.running_var.unsqueeze(0)
        elif self.mode == "hybrid":
            mean, var = self._hybrid_stats(xs)
        elif self.mode == "client" and self.stats_backend == "kernel" and not self.keep_normalized:
            y, mean, var = KernelClientBatchNorm.apply(xs, self.weight, self.bias, self.eps)
            if self.record:
                self._record(mean, var)
            return y.view_as(x)
        else:
            mean, var = client_moments(xs, self.stats_backend)
            if self.record:
                self._record(mean.detach(), var.detach())
            if self.mode == "union":
                count = torch.full((self.clients,), self.last_count, dtype=torch.int64, device=x.device)
                merged = bnstats.merge_stats(bnstats.ClientStats(mean=mean, var=var, count=count))
                mean, var = merged.mean.unsqueeze(0), merged.var.unsqueeze(0)
            elif self.mode == "sync":
                mean, var = self._synchronized(mean, var)
        shape = (mean.shape[0], 1, self.num_features) + (1,) * (x.dim() - 2)
        shift = self.bias.view((1, 1, self.num_features) + (1,) * (x.dim() - 2))
        if self.keep_normalized:
            normalized = (xs - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
            self.normalized = normalized.detach()
            return (normalized * self.weight.view(shift.shape) + shift).view_as(x)
        scale = (self.weight * torch.rsqrt(var + self.eps)).view(shape)
        return ((xs - mean.view(shape)) * scale + shift).view_as(x)

    def _synchronized(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FedTAN: this layer's global batch statistics [1, C] from the clients' rows, differentiably."""
        if self.sync is None:
            raise ValueError("mode 'sync' needs the scheme's sync callable: configure(layers, sync=...)")
        count = torch.full((self.clients,), self.last_count, dtype=torch.int64, device=mean.device)
        merged = self.sync(bnstats.ClientStats(mean=mean, var=var, count=count))
        self.sync_stats = bnstats.GlobalStats(merged.mean.detach(), merged.var.detach(),
                                              merged.var_unbiased.detach(), merged.count, merged.clamped)
        return merged.mean.unsqueeze(0), merged.var.unsqueeze(0)

    def _hybrid_stats(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("mode 'hybrid' needs a HybridBatchNorm (this layer has no mixing parameter)")

    def _record(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        if self.sink is None:
            raise ValueError("record=True needs a sink list to append the statistics to")
        self.sink.append((mean, var))


class HybridBatchNorm(FederatedBatchNorm):
    """Hybrid BN (HBN): each client normalizes with (1 − a)·global + a·batch, for the mean and the variance.

    a = sigmoid(mix_logit) per channel, mix_logit a learnable parameter initialised to 0 (a = 1/2);
    "global" is the server's running statistics (buffers, constants in the forward: running_var is the
    unbiased estimate, mixed as is with the client's biased batch variance), "batch" the client's own
    statistics with gradients flowing through them. a → 1 is naive BN's normalization, a → 0 FBN's.
    Evaluation uses the running statistics only, like every scheme. The other modes behave as in
    FederatedBatchNorm (mix_logit then gets no gradient).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps, momentum)
        self.mix_logit = nn.Parameter(torch.zeros(num_features))
        self.mode = "hybrid"

    def _hybrid_stats(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = client_moments(xs, self.stats_backend)
        if self.record:
            self._record(mean.detach(), var.detach())
        a = torch.sigmoid(self.mix_logit)
        return (1 - a) * self.running_mean + a * mean, (1 - a) * self.running_var + a * var


def federated_bn_layers(model: nn.Module) -> list[FederatedBatchNorm]:
    """The model's FederatedBatchNorm layers in registration order (the CNN's forward order)."""
    return [m for m in model.modules() if isinstance(m, FederatedBatchNorm)]


def configure(layers: list[FederatedBatchNorm], *, mode: str | None = None, clients: int | None = None,
              record: bool | None = None, stats_backend: str | None = None, sink: list | None = None,
              sync=None) -> None:
    """Set the given attributes on every layer (None leaves an attribute as it is)."""
    if sync is not None and not callable(sync):
        raise ValueError(f"sync must be a callable ClientStats -> GlobalStats, got {type(sync).__name__}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if stats_backend is not None and stats_backend not in STATS_BACKENDS:
        raise ValueError(f"stats_backend must be one of {list(STATS_BACKENDS)}, got {stats_backend!r}")
    if clients is not None and (isinstance(clients, bool) or not isinstance(clients, int) or clients < 1):
        raise ValueError(f"clients must be an int >= 1, got {clients!r}")
    given = {name: value for name, value in dict(mode=mode, clients=clients, record=record,
                                                   stats_backend=stats_backend, sink=sink, sync=sync).items()
             if value is not None}
    for layer in layers:
        for name, value in given.items():
            setattr(layer, name, value)


__all__ = ["MODES", "STATS_BACKENDS", "KernelMoments", "KernelClientBatchNorm", "client_moments", "FederatedBatchNorm",
           "HybridBatchNorm", "federated_bn_layers", "configure"]
