"""Meamed, the mean around the median (Xie, Koyejo and Gupta 2018): per coordinate, the mean of the n − f
values nearest to the coordinate-wise median.

In sorted order s_0 <= ... <= s_{n-1} of one coordinate the n − f nearest values form a window
[i, i + n − f): the middle positions f .. n−f−1 always belong to it, and for each p < f the window
holds exactly one of the pair (s_p, s_{p+n−f}), the nearer one: s_{p+n−f} when med − s_p > s_{p+n−f} − med
(both sides only shrink, resp. grow, with p, so the choices always form one window). Ties keep the
lower value s_p. So the rule needs the f lowest and f highest values in order and the middle ones as a
set, never a gather: on CPU a comparator network (byzbn.kernels.order_statistics) on integer keys,
chunk by chunk of columns; elsewhere (and when x requires grad) torch.sort.

Non-finite values are the farthest from the median (NaN never nearer than ±Inf), so with at most f of
them in a coordinate (and 2f < n) none reaches the output.
"""
from __future__ import annotations

import torch

from byzbn._checks import check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.defenses.chunked_rows import column_step
from byzbn.defenses.registry import Aggregator, register_aggregator
from byzbn.kernels import _backend
from byzbn.kernels.order_statistics import from_keys, network, to_keys

# Per float dtype: (the integer type of its bits, the mask clearing the sign bit, the sign bit's shift).
_BITS = {torch.float32: (torch.int32, 0x7FFFFFFF, 31), torch.float64: (torch.int64, 2**63 - 1, 63)}


def _window_mean(s: torch.Tensor, f: int) -> torch.Tensor:
    """Meamed of sorted columns s [n, m] (torch.sort order, differentiable): the comparison as the docstring."""
    n = s.shape[0]
    k = n - f
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    total = s[f:k].sum(dim=0)
    if f:
        low, high = s[:f], s[k:]
        total = total + torch.where((med - low) > (high - med), high, low).sum(dim=0)
    return total / k


def _nearer_of_pairs(low: torch.Tensor, high: torch.Tensor, med: torch.Tensor) -> torch.Tensor:
    """Elementwise: high where med − low > high − med, else low; in bit arithmetic (torch.where is slow on CPU).

    Both differences are >= 0 or NaN: with the sign bit cleared their bit patterns order as the values do,
    NaN above +Inf, so the sign of their integer difference is the choice.
    """
    itype, magnitude, sign_shift = _BITS[low.dtype]
    d_low = (med - low).view(itype).bitwise_and_(magnitude)
    d_high = (high - med).view(itype).bitwise_and_(magnitude)
    take_high = torch.bitwise_right_shift(d_high.sub_(d_low), sign_shift)   # all ones where d_high < d_low
    low_bits, high_bits = low.view(itype), high.view(itype)
    return (low_bits ^ ((low_bits ^ high_bits) & take_high)).view(low.dtype)


def _meamed_chunk_cpu(y: torch.Tensor, f: int) -> torch.Tensor:
    """Meamed of y [n, m] with the comparator network, pruned to the positions the rule needs."""
    n = y.shape[0]
    k = n - f
    outputs = tuple(sorted(set(range(f)) | set(range(k, n)) | {(n - 1) // 2, n // 2}))
    # NaN keys need no canonical form here: a NaN sorting first (negative sign bit) is as far from the
    # median as one sorting last, and the keys map back to the same bits.
    rows = list(to_keys(y, nan_possible=False).unbind(0))
    spare = torch.empty_like(rows[0])
    for lo, hi in network(n, outputs):
        torch.minimum(rows[lo], rows[hi], out=spare)
        torch.maximum(rows[lo], rows[hi], out=rows[hi])
        rows[lo], spare = spare, rows[lo]
    # Positions outside `outputs` hold the middle values as a set, which is all the sum needs.
    s = from_keys(torch.stack(rows), y.dtype)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    total = s[f:k].sum(dim=0)
    if f:
        total += _nearer_of_pairs(s[:f], s[k:], med).sum(dim=0)
    return total.div_(k)


def meamed(x: torch.Tensor, f: int) -> torch.Tensor:
    """Per coordinate, the mean of the n − f values nearest to the median (ties keep the lower value); 2f < n."""
    check_matrix("x", x)
    n, d = x.shape
    check_meamed_f(f, n)
    if x.device.type != "cpu" or _backend.needs_grad(x):
        return _window_mean(torch.sort(x, dim=0).values, f)
    out = torch.empty(d, dtype=x.dtype)
    step = column_step(x)
    with torch.no_grad(), one_cpu_thread(x.device):
        for c0 in range(0, d, step):
            out[c0:c0 + step] = _meamed_chunk_cpu(x[:, c0:c0 + step], f)
    return out


def check_meamed_f(f: int, n: int) -> None:
    if 2 * f >= n:
        raise ValueError(f"f={f} is out of range for meamed with n={n}: valid 0 <= f <= {(n - 1) // 2} (2f < n)")


@register_aggregator("meamed")
class Meamed(Aggregator):
    """Mean around the median: per coordinate, the mean of the n − f values nearest to the median (ByzFL's
    Meamed); needs 2f < n. Ties in distance keep the lower value. At most f NaN/±Inf values per coordinate
    never reach the output."""

    def check_n(self, n: int) -> None:
        super().check_n(n)
        check_meamed_f(self.f, n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return meamed(x, self.f)


__all__ = ["meamed", "Meamed"]
