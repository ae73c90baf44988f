"""Per-client BN statistics: mean and biased variance per client and channel, reading x once.

x has shape [n, B, C, *spatial] (the runner's stacked [n·B, C, H, W] activations viewed with n known).
Client i, channel c owns the B·S values x[i, :, c, ...] (S = prod(spatial)): B segments of S contiguous
elements. Both fast paths compute exact two-pass statistics of small in-cache / in-register tiles and
merge the tiles with Chan's parallel update (law of total variance), so x is read from memory once and
nothing is ever formed as E[x²] − E[x]². Both shift the values by a pilot (the first value of the
segment / channel) before summing, so a variance tiny next to the mean (mean 1e4, std 1e-2) keeps fp32
precision.

- Triton (CUDA): one program per (client, block of channels, range of the batch); the few partial
  (mean, M2) rows of the batch ranges are merged in torch.
- torch (CPU, and the fallback): for long segments (S >= 64) per-segment two-pass moments over row
  chunks of ~1 MB, then the merge over the B segments (in float64: it is small); for short ones,
  [b, C, S] tiles of one client. About 10x faster than torch.var_mean(x, dim=(1, 3, 4)) on CPU.

Accumulation is fp32 for fp16/bf16/fp32 inputs and fp64 for fp64, as in byzbn.stats.client_stats (the
reference these paths are tested against). No autograd here: byzbn.nn.functional.KernelMoments adds the
analytic backward; when x requires grad, backend "auto"/"torch" compute the differentiable reference instead.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from byzbn import stats
from byzbn._checks import FLOAT_DTYPES
from byzbn._threads import one_cpu_thread
from byzbn.kernels import _backend

TILE_ELEMENTS = 4096          # values one Triton program holds per step (registers)
CPU_CHUNK_ELEMENTS = 1 << 18  # values per torch step (about 1 MB of fp32: stays in cache for the 2nd pass)
CPU_LONG_SEGMENT = 64         # segments at least this long are reduced row-wise on CPU


@triton.jit
def _client_stats_kernel(
    x_ptr,      # [n, B, C, S] contiguous, fp16 / bf16 / fp32 / fp64
    mean_ptr,   # [SPLITS, n, C] ACC: mean of x − x[client, 0, c, 0] over this program's batch range
    m2_ptr,     # [SPLITS, n, C] ACC: Σ (x − mean)² over the same values
    B, C, S, b_per_split,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_cblocks = tl.cdiv(C, BLOCK_C)
    client = pid // n_cblocks
    chans = (pid % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok_c = chans < C
    b_start = split * b_per_split
    b_stop = tl.minimum(b_start + b_per_split, B)
    client_ptr = x_ptr + client.to(tl.int64) * B * C * S
    # Work on x − pilot (the channel's first value): the tile means stay small, so their fp32 rounding
    # does not swamp a variance that is tiny next to the mean (e.g. mean 1e4, std 1e-2).
    pilot = tl.load(client_ptr + chans.to(tl.int64) * S, mask=ok_c, other=0.0).to(ACC)
    bs = tl.arange(0, BLOCK_B)
    ss = tl.arange(0, BLOCK_S)
    count = tl.zeros([BLOCK_C], dtype=ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for b0 in range(b_start, b_stop, BLOCK_B):
        b = b0 + bs
        ok_b = b < b_stop
        nb = tl.minimum(b_stop - b0, BLOCK_B)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + ss
            mask = ok_b[:, None, None] & ok_c[None, :, None] & (s < S)[None, None, :]
            offs = (b.to(tl.int64)[:, None, None] * C + chans[None, :, None]) * S + s[None, None, :]
            t = tl.load(client_ptr + offs, mask=mask, other=0.0).to(ACC)   # [BLOCK_B, BLOCK_C, BLOCK_S]
            t = tl.where(mask, t - pilot[None, :, None], 0.0)
            t_count = (nb * tl.minimum(S - s0, BLOCK_S)).to(ACC)
            t_mean = tl.sum(tl.sum(t, axis=2), axis=0) / t_count
            dev = tl.where(mask, t - t_mean[None, :, None], 0.0)
            t_m2 = tl.sum(tl.sum(dev * dev, axis=2), axis=0)
            # Chan et al.: merge the tile's (count, mean, M2) into the running ones.
            new_count = count + t_count
            delta = t_mean - mean
            mean += delta * (t_count / new_count)
            m2 += t_m2 + delta * delta * (count * (t_count / new_count))
            count = new_count
    n_clients = tl.num_programs(0) // n_cblocks
    out = (split * n_clients + client).to(tl.int64) * C + chans
    tl.store(mean_ptr + out, mean, mask=ok_c)
    tl.store(m2_ptr + out, m2, mask=ok_c)


def _check_activations(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape [n, B, C, *spatial], got {got}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must have a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"x must have n >= 1 clients, B >= 1 samples, C >= 1 channels and no empty dims, "
                         f"got {tuple(x.shape)}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _merge_parts(count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, dim: int):
    """Merge partial (count, mean, M2) along dim into (mean, biased var): byzbn.stats.merge_moments, the
    one law-of-total-variance merge (two passes over the parts, int64 counts)."""
    return stats.merge_moments(count, mean, m2 / count, dim)


def tile_shape(b: int, c: int, s: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_C, BLOCK_S): a [samples, channels, positions] tile of about TILE_ELEMENTS values,
    contiguous runs along the positions first, then along channels (all of them when S is small)."""
    block_s = min(_backend.next_pow2(s), 1024)
    block_c = min(_backend.next_pow2(c), max(1, TILE_ELEMENTS // 2 // block_s))
    block_b = min(_backend.next_pow2(b), max(1, TILE_ELEMENTS // (block_s * block_c)))
    return block_b, block_c, block_s


def _client_stats_triton(x: torch.Tensor, splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel on x [n, B, C, *spatial]; splits overrides how many batch ranges run in parallel."""
    n, b, c = x.shape[:3]
    s = math.prod(x.shape[3:])
    x = x.contiguous()
    acc = _acc_dtype(x.dtype)
    block_b, block_c, block_s = tile_shape(b, c, s)
    programs = n * triton.cdiv(c, block_c)
    if splits is None:  # enough programs to fill the GPU, each with at least one batch tile
        splits = min(triton.cdiv(4 * _backend.sm_count(x.device), programs), triton.cdiv(b, block_b))
    splits = max(1, min(splits, b))
    b_per_split = triton.cdiv(b, splits)
    splits = triton.cdiv(b, b_per_split)
    means = torch.empty(splits, n, c, dtype=acc, device=x.device)
    m2s = torch.empty_like(means)
    _client_stats_kernel[(programs, splits)](
        x, means, m2s, b, c, s, b_per_split,
        BLOCK_B=block_b, BLOCK_C=block_c, BLOCK_S=block_s,
        ACC=tl.float64 if acc == torch.float64 else tl.float32)
    pilot = x.view(n, b, c, s)[:, 0, :, 0].to(acc)
    if splits == 1:
        return pilot + means[0], m2s[0] / (b * s)
    per_split = torch.tensor([min(b_per_split, b - i * b_per_split) * s for i in range(splits)],
                             dtype=torch.int64, device=x.device).view(splits, 1, 1)
    mean, var = _merge_parts(per_split, means, m2s, dim=0)
    return pilot + mean, var


def _segment_moments(rows: torch.Tensor, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 mean, M2) of every row of rows [R, S], chunk by chunk so the second pass reads from cache.

    The rows are shifted by their first value before summing (exact for values within a factor 2 of
    it), so the fp32 mean of the deviations keeps the precision a variance much smaller than the
    mean needs; mean = first value + mean of the deviations, formed in float64 for the merge.
    """
    r, s = rows.shape
    shift_mean = torch.empty(r, dtype=acc, device=rows.device)
    m2 = torch.empty(r, dtype=acc, device=rows.device)
    step = max(1, CPU_CHUNK_ELEMENTS // s)
    buf = torch.empty(min(step, r), s, dtype=acc, device=rows.device)
    for r0 in range(0, r, step):
        chunk = rows[r0:r0 + step].to(acc)   # (a no-op for fp32: x − pilot must not round to fp16)
        m, dev = shift_mean[r0:r0 + step], buf[:chunk.shape[0]]
        torch.sub(chunk, chunk[:, :1], out=dev)
        torch.sum(dev, dim=1, out=m)
        m.div_(s)
        dev.sub_(m[:, None]).square_()
        torch.sum(dev, dim=1, out=m2[r0:r0 + step])
    return rows[:, 0].double() + shift_mean.double(), m2


def _tile_moments(xc: torch.Tensor, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, float64 mean, M2) per tile and channel of one client's xc [B, C, S]: tiles of whole samples.

    Shifted by each channel's first value as in _segment_moments.
    """
    b, c, s = xc.shape
    step = max(1, CPU_CHUNK_ELEMENTS // (c * s))
    pilot = xc[0, :, 0].to(acc)
    counts, means, m2s = [], [], []
    for b0 in range(0, b, step):
        dev = xc[b0:b0 + step].to(acc) - pilot[None, :, None]
        k = dev.shape[0] * s
        m = dev.sum(dim=0).sum(dim=1).div_(k)
        dev.sub_(m[None, :, None]).square_()
        counts.append(k)
        means.append(m)
        m2s.append(dev.sum(dim=0).sum(dim=1))
    count = torch.tensor(counts, dtype=torch.int64, device=xc.device)[:, None]
    return count, pilot.double() + torch.stack(means).double(), torch.stack(m2s).double()


def _client_stats_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch fast path (meant for CPU): exact two-pass tiles, Chan merge; reads x once from memory."""
    n, b, c = x.shape[:3]
    s = math.prod(x.shape[3:])
    acc = _acc_dtype(x.dtype)
    x = x.contiguous()
    if s >= CPU_LONG_SEGMENT:
        seg_mean, seg_m2 = _segment_moments(x.view(n * b * c, s), acc)
        count = torch.full((1, b, 1), s, dtype=torch.int64, device=x.device)
        mean, var = _merge_parts(count, seg_mean.view(n, b, c), seg_m2.double().view(n, b, c), dim=1)
        return mean.to(acc), var.to(acc)
    means, variances = [], []
    for i in range(n):
        count, mean, m2 = _tile_moments(x[i].view(b, c, s), acc)
        mi, vi = _merge_parts(count, mean, m2, dim=0)
        means.append(mi)
        variances.append(vi)
    return torch.stack(means).to(acc), torch.stack(variances).to(acc)


def client_stats(x: torch.Tensor, backend: str = "auto") -> stats.ClientStats:
    """Per-client, per-channel mean and biased variance of x [n, B, C, *spatial] (fp32 accumulation).

    backend: "auto" (Triton for CUDA tensors, the torch fast path otherwise), "triton" or "torch".
    When x requires grad (and grad mode is on), "auto"/"torch" return the differentiable reference
    byzbn.stats.client_stats and "triton" raises.
    """
    _check_activations(x)
    grad = _backend.needs_grad(x)
    chosen = _backend.choose(backend, x, _client_stats_kernel,
                             "the Triton kernel has no autograd (wrap it as byzbn.nn.functional.KernelMoments does)"
                             if grad else None)
    if chosen == "torch" and grad:
        return stats.client_stats(x)
    with torch.no_grad(), one_cpu_thread(x.device):
        mean, var = _client_stats_triton(x) if chosen == "triton" else _client_stats_torch(x)
    n = x.shape[0]
    count = torch.full((n,), x.numel() // (n * x.shape[2]), dtype=torch.int64, device=x.device)
    return stats.ClientStats(mean=mean, var=var, count=count)
