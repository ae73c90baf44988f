"""Row-wise passes over a submission matrix x [n, d] by cache-sized column chunks (CPU) or whole (other devices).

The iterative rules (geometric median, centered clipping) and the clipping pre-aggregators need, per
iteration, the squared distance of every row to a centre and a weighted combination of the rows. On CPU
both stream x once per pass in chunks of about CPU_CHUNK_ELEMENTS values, so the differences x_chunk − c
stay in cache and memory stays O(n·d) (x itself) plus O(n·chunk). Every op is out of place, so the same
code is the differentiable path when x requires grad.

Distances: squares are summed in x's dtype within a chunk and in float64 across chunks. A float32 row
whose sum overflows (values beyond ~1e19) or may have lost squares to underflow (a sum below
d·tiny/eps, values below ~1e-13) is summed again in float64, where no float32 square over- or underflows.
So for float32 input "not finite" means the row itself holds a NaN/±Inf; for float64 input a squared
distance beyond ~1e308 is not finite too, and squares below ~1e-308 count as 0 (as in torch.linalg.norm).
"""
from __future__ import annotations

from typing import Optional

import torch

from byzbn.kernels.robust_aggregate import CPU_CHUNK_ELEMENTS


def column_step(x: torch.Tensor) -> int:
    """Columns per chunk: about CPU_CHUNK_ELEMENTS values on CPU (they stay in L2), all of them elsewhere."""
    n, d = x.shape
    return max(1, CPU_CHUNK_ELEMENTS // n) if x.device.type == "cpu" else d


def select_rows(chunk: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
    """chunk itself when rows is None (every row), else its rows `rows` (a small in-cache copy)."""
    return chunk if rows is None else chunk.index_select(0, rows)


class _Scratch:
    """Reused [rows, step] and [rows] buffers for the no-grad CPU path: a fresh 2 MB temporary per chunk
    costs page faults (measured: the squared distances took twice as long without them)."""

    def __init__(self, x: torch.Tensor, rows: int, step: int):
        self.square = torch.empty(rows, min(step, x.shape[1]), dtype=x.dtype, device=x.device)
        self.sums = torch.empty(rows, dtype=x.dtype, device=x.device)


def _scratch(x: torch.Tensor, rows: int, step: int) -> Optional[_Scratch]:
    """Buffers when the ops may write in place (no autograd graph to keep), else None."""
    return None if torch.is_grad_enabled() and x.requires_grad else _Scratch(x, rows, step)


def _sq_sums(chunk: torch.Tensor, centre: Optional[torch.Tensor], exact: bool,
             scratch: Optional[_Scratch] = None) -> torch.Tensor:
    """float64 [rows]: Σ (chunk − centre)² along dim 1; exact: the difference too is taken in float64."""
    if exact:
        chunk = chunk.to(torch.float64)
        centre = None if centre is None else centre.to(torch.float64)
    elif scratch is not None:
        buf = scratch.square[:chunk.shape[0], :chunk.shape[1]]
        if centre is None:
            torch.mul(chunk, chunk, out=buf)
        else:
            torch.sub(chunk, centre, out=buf).mul_(buf)
        return torch.sum(buf, dim=1, out=scratch.sums[:chunk.shape[0]]).to(torch.float64)
    diff = chunk if centre is None else chunk - centre
    return (diff * diff).sum(dim=1).to(torch.float64)


def _centre_chunk(centre: Optional[torch.Tensor], c0: int, step: int) -> Optional[torch.Tensor]:
    return None if centre is None else centre[c0:c0 + step]


def sq_distances(x: torch.Tensor, centre: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None,
                 step: Optional[int] = None) -> torch.Tensor:
    """float64 [r]: Σ_k (x_ik − centre_k)² for the rows `rows` of x (all when None; centre None = zeros)."""
    step = step or column_step(x)
    return _redo_inexact(x, centre, rows, step, _sq_distance_pass(x, centre, rows, step, exact=False))


def _redo_inexact(x, centre, rows, step: int, total: torch.Tensor) -> torch.Tensor:
    """total with the float32 rows whose sum over- or underflowed summed again in float64 (module docstring)."""
    if x.dtype == torch.float64:
        return total
    info = torch.finfo(x.dtype)
    inexact = ~torch.isfinite(total) | (total < x.shape[1] * info.tiny / info.eps)
    if not bool(inexact.any()):
        return total
    redo = inexact.nonzero().flatten()
    again = redo if rows is None else rows.index_select(0, redo)
    return total.index_put((redo,), _sq_distance_pass(x, centre, again, step, exact=True))


def _sq_distance_pass(x, centre, rows, step: int, exact: bool) -> torch.Tensor:
    r = x.shape[0] if rows is None else rows.numel()
    total = torch.zeros(r, dtype=torch.float64, device=x.device)
    scratch = None if exact else _scratch(x, r, step)
    for c0 in range(0, x.shape[1], step):
        chunk = select_rows(x[:, c0:c0 + step], rows)
        total = total + _sq_sums(chunk, _centre_chunk(centre, c0, step), exact, scratch)
    return total


def combine(x: torch.Tensor, weights: torch.Tensor, rows: Optional[torch.Tensor] = None,
            base: Optional[torch.Tensor] = None, distances_to_result: bool = False,
            step: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One pass: y = base + Σ_i weights_i (x_i − base) over the rows `rows` (base None: Σ_i weights_i x_i).

    weights [r] >= 0 with Σ weights <= 1 (cast to x's dtype). y is formed as (1 − Σ w)·base + Σ w_i x_i,
    which reads x directly: with such weights its rounding is of the order of the other form's
    (eps·(|base| + Σ w_i |x_i − base|) up to a factor 2). With distances_to_result, also the float64
    squared distances of those rows to y, summed while each chunk is still in cache (the next
    iteration's input), else None. Returns (y [d], distances or None).
    """
    step = step or column_step(x)
    w = weights.to(x.dtype)
    keep = None if base is None else (1.0 - weights.sum()).to(x.dtype)
    scratch = _scratch(x, w.shape[0], step) if distances_to_result else None
    in_place = not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device) if in_place else None
    parts = []
    total = torch.zeros(w.shape[0], dtype=torch.float64, device=x.device) if distances_to_result else None
    for c0 in range(0, x.shape[1], step):
        chunk = select_rows(x[:, c0:c0 + step], rows)
        c = _centre_chunk(base, c0, step)
        if in_place:
            y = torch.mv(chunk.t(), w, out=out[c0:c0 + chunk.shape[1]])
            if c is not None:
                y.add_(c * keep)
        else:
            y = w @ chunk if c is None else keep * c + w @ chunk
            parts.append(y)
        if distances_to_result:
            total = total + _sq_sums(chunk, y, exact=False, scratch=scratch)   # a new tensor: sums may alias scratch
    y = out if in_place else torch.cat(parts)
    if distances_to_result:
        total = _redo_inexact(x, y, rows, step, total)
    return y, total


__all__ = ["CPU_CHUNK_ELEMENTS", "column_step", "select_rows", "sq_distances", "combine"]
