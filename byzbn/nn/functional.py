"""Per-client batch-norm autograd functions over the stats kernel (which itself has no autograd).

xs has shape [n, B, C, *spatial]: n client batches stacked. `KernelMoments` gives the per-client mean
and biased variance with their analytic gradient (dμ/dx = 1/m, dv/dx = 2(x − μ)/m per client and
channel); `KernelClientBatchNorm` fuses that backward with the normalization's for naive BN's hot path.
Both backwards are centred on (x − μ), as the forward is: Σ dy·x − μ·Σ dy would cancel catastrophically
when the mean is large against the spread.
"""
from __future__ import annotations

import torch

from byzbn.kernels import client_stats


def client_channel_shape(xs: torch.Tensor) -> tuple[int, ...]:
    """The shape [n, 1, C, 1, ...] that broadcasts a per-client, per-channel [n, C] tensor over xs."""
    return (xs.shape[0], 1, xs.shape[2]) + (1,) * (xs.dim() - 3)


def _reduce_dims(xs: torch.Tensor) -> tuple[int, ...]:
    return (1,) + tuple(range(3, xs.dim()))


def _per_client(xs: torch.Tensor) -> int:
    return xs.numel() // (xs.shape[0] * xs.shape[2])


class KernelMoments(torch.autograd.Function):
    """Per-client mean and biased variance of xs [n, B, C, *] via the stats kernel, with their gradient."""

    @staticmethod
    def forward(ctx, xs: torch.Tensor):
        s = client_stats(xs)
        mean, var = s.mean.to(xs.dtype), s.var.to(xs.dtype)
        ctx.save_for_backward(xs, mean)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor):
        xs, mean = ctx.saved_tensors
        shape = client_channel_shape(xs)
        return (grad_mean.view(shape) + 2.0 * grad_var.view(shape) * (xs - mean.view(shape))) / _per_client(xs)


class KernelClientBatchNorm(torch.autograd.Function):
    """Per-client batch norm of xs [n, B, C, *] with the kernel's statistics, fused (the naive-BN hot path).

    Forward: (μ_i, v_i) from the stats kernel, then y = x·s + t with s = w/√(v_i + eps), t = b − μ_i·s
    per client and channel. Backward, per client and channel with m elements, x̃ = x − μ_i:
    S1 = Σ dy, S2 = Σ dy·x̃, dx = s·(dy − S1/m) − x̃·s·S2/(m·(v_i + eps)), dw = Σ_i S2/√(v_i + eps),
    db = Σ_i S1. A few passes over x instead of autograd's dozen. Also returns the detached (μ_i, v_i).
    """

    @staticmethod
    def forward(ctx, xs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        s = client_stats(xs)
        mean, var = s.mean.to(xs.dtype), s.var.to(xs.dtype)
        shape = client_channel_shape(xs)
        rstd = torch.rsqrt(var + eps)
        scale = weight * rstd
        shift = bias - mean * scale
        ctx.save_for_backward(xs, mean, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return torch.addcmul(shift.view(shape), xs, scale.view(shape)), mean, var

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_mean, _grad_var):
        xs, mean, rstd, weight = ctx.saved_tensors
        shape = client_channel_shape(xs)
        dims = _reduce_dims(xs)
        m = _per_client(xs)
        centred = xs - mean.view(shape)
        s1 = grad_out.sum(dim=dims)                       # [n, C]
        s2 = (grad_out * centred).sum(dim=dims)           # Σ dy·(x − μ)
        scale = weight * rstd
        a = scale * rstd * rstd * s2 / m
        grad_x = torch.addcmul((-scale * s1 / m).view(shape), grad_out, scale.view(shape))
        grad_x.sub_(centred.mul_(a.view(shape)))
        return grad_x, (s2 * rstd).sum(dim=0), s1.sum(dim=0), None


def client_moments(xs: torch.Tensor, backend: str = "kernel") -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-client (mean, biased var), each [n, C], of xs [n, B, C, *spatial]."""
    if backend == "kernel":
        return KernelMoments.apply(xs)
    if backend == "torch":
        var, mean = torch.var_mean(xs, dim=_reduce_dims(xs), correction=0)
        return mean, var
    raise ValueError(f"backend must be one of ['kernel', 'torch'], got {backend!r}")


__all__ = ["client_channel_shape", "KernelMoments", "KernelClientBatchNorm", "client_moments"]
