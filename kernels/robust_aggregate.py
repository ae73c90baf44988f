"""Robust aggregation of a submission matrix x [n, d] into [d]: optional NNM, then mean / median / trimmed mean.

Semantics of byzbn.kernels.reference (nnm, mean, coordinate_median, trimmed_mean), including
non-finite rows: NNM sees them infinitely far (ties to the lower index), a mixed row is the IEEE mean of
its n − f selected rows, the median and trimmed mean sort -Inf first and NaN last.

Both fast paths read x twice and hold O(n·d + n²) memory:
1. distances (byzbn.kernels.pairwise_distances), then the n − f nearest rows of every row
   (a stable sort of the tiny [n, n] matrix) as a 0/1 mixing matrix W (byzbn.kernels.mixing);
2. per block of columns: y = W·x / (n − f) (W·x as a matrix product, never an [n, n − f, d] gather),
   then the coordinate-wise rule on the n mixed values, writing only the d outputs.

The product would turn 0·Inf into NaN, so it only sees the finite entries; the NaN/±Inf entries of the
few non-finite rows are added afterwards to the mixed rows that selected them (same IEEE outcome).
Triton (CUDA, float32, n <= 256): _mix_aggregate_kernel does step 2 in registers; W·x runs on tensor
cores as two exact-weight TF32 products (x split into its top 11 significant bits and the rest, error
~2⁻²¹·|x|); the median / trimmed mean sorts integer keys (order of the reference, NaN last) with tl.sort.
torch (CPU): chunks of columns, BLAS for W·x, a sorting network (byzbn.kernels.order_statistics) for the
rule; on CUDA tensors (backend="torch") torch.sort replaces the network.
When x requires grad, "auto"/"torch" compose the differentiable references and "triton" raises.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from byzbn._checks import check_f, check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.kernels import _backend, order_statistics, reference
from byzbn.kernels import pairwise_distances as _dist
from byzbn.kernels.mixing import mix_chunk, nnm_weights

RULES = ("mean", "median", "trimmed-mean")
BACKENDS = _backend.BACKENDS
_RULE_IDS = {"mean": 0, "median": 1, "trimmed-mean": 2}
CPU_CHUNK_ELEMENTS = 1 << 19   # n × columns per CPU step (2 MB of fp32: mixing and sorting stay in cache)


@triton.jit
def _mix_aggregate_kernel(
    x_ptr,        # [n, d] float32 submissions
    w_ptr,        # [n, n] float32 0/1: w[i, j] = 1 when row j is one of row i's n − f nearest (MIX)
    bad_ptr,      # [n] int32: the rows holding a NaN/±Inf first, then the others (MIX)
    num_bad_ptr,  # [1] int32: how many rows of bad_ptr hold a NaN/±Inf (MIX)
    out_ptr,      # [d] float32
    n, d, f, stride_xn, stride_xd, stride_wn,
    N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    MIX: tl.constexpr, RULE: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_c = cols < d
    rows = tl.arange(0, N_PAD)          # client rows along the minor axis: tl.sort sorts that one
    ok_r = rows < n
    if MIX:
        # y[c, i] = Σ_j w[i, j] x[j, c], as x_block^T [BLOCK_D, BLOCK_K] @ w_block^T [BLOCK_K, N_PAD].
        y = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
        for k0 in tl.static_range(0, N_PAD, BLOCK_K):
            src = k0 + tl.arange(0, BLOCK_K)
            ok_s = src < n
            xt = tl.load(x_ptr + src.to(tl.int64)[None, :] * stride_xn + cols[:, None] * stride_xd,
                         mask=ok_c[:, None] & ok_s[None, :], other=0.0)
            finite = (xt.to(tl.int32, bitcast=True) & 0x7F800000) != 0x7F800000   # exponent not all ones
            xt = tl.where(finite, xt, 0.0)      # the product sees finite entries only (0·Inf = NaN)
            wt = tl.load(w_ptr + rows[None, :] * stride_wn + src[:, None],
                         mask=ok_s[:, None] & ok_r[None, :], other=0.0)
            hi = (xt.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # top 11 bits: exact TF32
            y = tl.dot(hi, wt, y, input_precision="tf32")
            y = tl.dot(xt - hi, wt, y, input_precision="tf32")
        num_bad = tl.load(num_bad_ptr)
        for t in range(0, num_bad):
            j = tl.load(bad_ptr + t)
            xj = tl.load(x_ptr + j.to(tl.int64) * stride_xn + cols * stride_xd, mask=ok_c, other=0.0)
            wj = tl.load(w_ptr + rows * stride_wn + j, mask=ok_r, other=0.0)
            nonfinite = (xj.to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000
            y += tl.where((wj[None, :] != 0) & nonfinite[:, None], xj[:, None], 0.0)
        y = y / (n - f)
    else:
        y = tl.load(x_ptr + rows.to(tl.int64)[None, :] * stride_xn + cols[:, None] * stride_xd,
                    mask=ok_c[:, None] & ok_r[None, :], other=0.0)
    if RULE == 0:
        out = tl.sum(tl.where(ok_r[None, :], y, 0.0), axis=1) / n
    else:
        # Integer keys in the reference's order: -Inf first, NaN after +Inf, padding after NaN.
        bits = y.to(tl.int32, bitcast=True)
        keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        keys = tl.where(y != y, 0x7FC00000, keys)
        keys = tl.sort(tl.where(ok_r[None, :], keys, 0x7FFFFFFF))
        pos = tl.arange(0, N_PAD)[None, :]
        if RULE == 1:
            k_hi = tl.sum(tl.where(pos == n // 2, keys, 0), axis=1)
            k_lo = tl.sum(tl.where(pos == (n - 1) // 2, keys, 0), axis=1)
            v_hi = (k_hi ^ ((k_hi >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
            v_lo = (k_lo ^ ((k_lo >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
            out = tl.where(n % 2 == 1, v_hi, 0.5 * (v_lo + v_hi))
        else:
            vals = (keys ^ ((keys >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
            kept = (pos >= f) & (pos < n - f)
            out = tl.sum(tl.where(kept, vals, 0.0), axis=1) / (n - 2 * f)
    tl.store(out_ptr + cols, out, mask=ok_c)


def tile_shape(n: int, d: int) -> tuple[int, int, int, int]:
    """(N_PAD, BLOCK_D, BLOCK_K, num_warps): all n rows (padded to a power of two >= 16, as tl.dot needs)
    times a block of columns, about 4096 values per program."""
    n_pad = max(16, _backend.next_pow2(n))
    block_d = max(16, min(_backend.next_pow2(d), 4096 // n_pad))
    return n_pad, block_d, min(n_pad, 32), 8 if n_pad * block_d >= 4096 else 4


def _robust_aggregate_triton(x: torch.Tensor, f: int, rule: str, nnm: bool, **tuning) -> torch.Tensor:
    """Launch the kernels; tuning passes inner / chunk_len to the distance kernel (tests use it)."""
    n, d = x.shape
    n_pad, block_d, block_k, num_warps = tile_shape(n, d)
    if nnm:
        dist, finite = _dist.sq_distances_triton(x, **tuning)
        w = nnm_weights(dist, f)
        order = torch.argsort(finite.to(torch.int32), stable=True).to(torch.int32)   # non-finite rows first
        num_bad = (~finite).sum().to(torch.int32).reshape(1)
    else:
        w, order, num_bad = x, x, x     # unused when MIX is off
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    _mix_aggregate_kernel[(triton.cdiv(d, block_d),)](
        x, w, order, num_bad, out, n, d, f, x.stride(0), x.stride(1), w.stride(0),
        N_PAD=n_pad, BLOCK_D=block_d, BLOCK_K=block_k, MIX=nnm, RULE=_RULE_IDS[rule], num_warps=num_warps)
    return out


def _rule_on_chunk(y: torch.Tensor, rule: str, f: int, nan_possible: bool) -> torch.Tensor:
    if rule == "mean":
        return y.mean(dim=0)
    if y.device.type == "cpu":  # the network beats torch.sort(dim=0) by 10-50x for n = 16 .. 256
        if rule == "median":
            return order_statistics.median(y, nan_possible)
        return order_statistics.trimmed_mean(y, f, nan_possible)
    n = y.shape[0]
    s = torch.sort(y, dim=0).values
    if rule == "trimmed-mean":
        return s[f: n - f].mean(dim=0)
    return s[n // 2].clone() if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _robust_aggregate_torch(x: torch.Tensor, f: int, rule: str, nnm: bool) -> torch.Tensor:
    """The torch fast path: distances once, then mixing and the rule chunk by chunk of columns."""
    n, d = x.shape
    if nnm:
        dist, finite = _dist.sq_distances_torch(x)
        w = nnm_weights(dist, f)
        bad = (~finite).nonzero().flatten().tolist()
    elif rule == "mean":
        return x.mean(dim=0)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    step = d if x.device.type != "cpu" else max(1, CPU_CHUNK_ELEMENTS // n)
    for c0 in range(0, d, step):
        chunk = x[:, c0:c0 + step]
        y = mix_chunk(chunk, w, finite, bad, n - f) if nnm else chunk
        # Mixed finite rows hold no NaN: skip the NaN pass of the sort keys.
        out[c0:c0 + step] = _rule_on_chunk(y, rule, f, nan_possible=bool(bad) if nnm else True)
    return out


def _reference(x: torch.Tensor, f: int, rule: str, nnm: bool) -> torch.Tensor:
    """The differentiable composition of the references (used when x requires grad)."""
    y = reference.nnm(x, f) if nnm else x
    if rule == "mean":
        return reference.mean(y)
    return reference.coordinate_median(y) if rule == "median" else reference.trimmed_mean(y, f)


def robust_aggregate(x: torch.Tensor, f: int, rule: str, nnm: bool = True, backend: str = "auto") -> torch.Tensor:
    """Aggregate the submission matrix x [n, d] into [d]: NNM (if nnm) then the coordinate-wise rule.

    rule: "mean", "median" or "trimmed-mean"; f: the tolerated Byzantine rows (median and trimmed mean
    need 2f < n, NNM needs f < n). backend: "auto" (Triton for CUDA float32 with n <= 256, the torch
    fast path otherwise), "triton" (raises ValueError when it cannot run) or "torch".
    """
    check_matrix("x", x)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    n = x.shape[0]
    check_f(f, n, rule if rule != "mean" else "")
    if nnm:
        check_f(f, n, "nnm")
    chosen = _backend.choose(backend, x, _mix_aggregate_kernel, _dist.unsupported_reason(x))
    if chosen == "triton":
        return _robust_aggregate_triton(x, f, rule, nnm)
    if _backend.needs_grad(x):
        return _reference(x, f, rule, nnm)
    with torch.no_grad(), one_cpu_thread(x.device):
        return _robust_aggregate_torch(x, f, rule, nnm)
