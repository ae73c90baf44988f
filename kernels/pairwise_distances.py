"""Pairwise squared Euclidean distances between the rows of a submission matrix x [n, d], for NNM.

Semantics of byzbn.kernels.reference.pairwise_sq_distances: Σ_k (x_ik − x_jk)², +inf for pairs
involving a row with a NaN/±Inf, 0 on the diagonal. Rows with equal values get bitwise equal
distances, so NNM's ties (broken by the lower index) match the reference exactly. Neither path forms
‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩ of the raw values: at values ~3e3 with spread 1e-3 its cancellation
leaves nothing of the distances and reorders the neighbours.

- Triton (CUDA): one program per (chunk of columns, tile pair of 32 rows × 32 rows), only the tiles on
  or above the diagonal (the distance is symmetric). Each program sums [rows, rows, BLOCK_K]
  differences in registers, blocked in INNER steps (fp32 error grows with the number of blocks, not of
  columns), and writes its partial [n, n] sums; torch adds the few chunk partials. A row is non-finite
  exactly when its self-distance Σ (x_ik − x_ik)² is NaN (x − x is 0 for finite x, NaN for NaN/±Inf),
  so no separate pass over x is needed to find those rows.
- torch (CPU), float32: per cache-sized column chunk, the rows minus one central row (in float64,
  where the difference of two float32 values is exact), then ‖a‖² + ‖b‖² − 2a·b from their float64
  Gram matrix, summed over chunks in float64. Translation keeps distances, and around a central row
  the Gram cancels only the spread, not the offset; integer-valued data stay exact, so exact ties stay
  ties. O(n·chunk) extra memory, about 10 % slower than the Gram of the raw values.
- torch, float64: products of float64 values are not exact, so no Gram can keep the reference's ties
  (rows that tie in exact arithmetic tie there because both sums add the same rounded squares): the
  reference's own arithmetic, Σ (x_j − x_i)² one row i at a time into a reused [n, d] buffer, which
  gives its values bit for bit (n passes over x: 1.6 s against 0.11 s for a float64 Gram at n = 32, d = 10^6).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from byzbn._checks import check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.kernels import _backend, reference

MAX_ROWS = 256           # the mixing kernel holds all n rows of a column block in registers (255 at n=256)
MAX_COLS = 2**31 - 1     # d must fit the int32 argument
CPU_CHUNK_ELEMENTS = 1 << 20   # n × columns per Gram chunk on CPU: a product big enough for BLAS's threads


@triton.jit
def _pairwise_sq_dist_kernel(
    x_ptr,        # [n, d] float32
    tiles_ptr,    # [num_tile_pairs, 2] int32: (row tile, column tile), row tile <= column tile
    partial_ptr,  # [num_chunks, n, n] float32: Σ over this chunk's columns of (x_i − x_j)²
    n, d, chunk_len,
    stride_xn, stride_xd,
    BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr, INNER: tl.constexpr,
):
    chunk = tl.program_id(0)    # grid dim 0: the one without the 65535 limit
    pair = tl.program_id(1)
    rows_i = tl.load(tiles_ptr + 2 * pair) * BLOCK_I + tl.arange(0, BLOCK_I)
    rows_j = tl.load(tiles_ptr + 2 * pair + 1) * BLOCK_I + tl.arange(0, BLOCK_I)
    ok_i = rows_i < n
    ok_j = rows_j < n
    ptr_i = x_ptr + rows_i.to(tl.int64)[:, None] * stride_xn   # [BLOCK_I, 1]
    ptr_j = x_ptr + rows_j.to(tl.int64)[:, None] * stride_xn
    ks = tl.arange(0, BLOCK_K)
    start = chunk.to(tl.int64) * chunk_len
    stop = tl.minimum(start + chunk_len, d)
    acc = tl.zeros([BLOCK_I, BLOCK_I], dtype=tl.float32)
    for outer in range(start, stop, INNER * BLOCK_K):
        block_acc = tl.zeros([BLOCK_I, BLOCK_I], dtype=tl.float32)
        for k0 in range(outer, tl.minimum(outer + INNER * BLOCK_K, stop), BLOCK_K):
            cols = k0 + ks
            ok_k = (cols < stop)[None, :]
            xi = tl.load(ptr_i + cols[None, :] * stride_xd, mask=ok_i[:, None] & ok_k, other=0.0)
            xj = tl.load(ptr_j + cols[None, :] * stride_xd, mask=ok_j[:, None] & ok_k, other=0.0)
            diff = xi[:, None, :] - xj[None, :, :]                  # [BLOCK_I, BLOCK_I, BLOCK_K]
            block_acc += tl.sum(diff * diff, axis=2)
        acc += block_acc
    # Store the tile and its mirror image (the pair (j, i)); on diagonal tiles both hold equal values.
    out_ptr = partial_ptr + chunk.to(tl.int64) * n * n
    ok = ok_i[:, None] & ok_j[None, :]
    tl.store(out_ptr + rows_i[:, None] * n + rows_j[None, :], acc, mask=ok)
    tl.store(out_ptr + rows_j[None, :] * n + rows_i[:, None], acc, mask=ok)


def tile_shape(n: int) -> tuple[int, int]:
    """(BLOCK_I, BLOCK_K): row tiles of 16 or 32 rows and 8192 differences in registers per step."""
    block_i = 16 if n <= 16 else 32
    return block_i, 8192 // (block_i * block_i)


def _raw_sq_distances_triton(x: torch.Tensor, inner: int = 64, chunk_len: int | None = None) -> torch.Tensor:
    """[n, n] fp32 Σ (x_i − x_j)² as the kernel sums it (NaN on the diagonal of non-finite rows).

    inner / chunk_len tune the blocking (chunk_len: columns per program, rounded up to a whole number
    of INNER blocks); the defaults fill the GPU with ~4 programs per SM.
    """
    n, d = x.shape
    block_i, block_k = tile_shape(n)
    tiles_per_side = triton.cdiv(n, block_i)
    pairs = [(a, b) for a in range(tiles_per_side) for b in range(a, tiles_per_side)]
    step = inner * block_k
    if chunk_len is None:
        wanted = triton.cdiv(4 * _backend.sm_count(x.device), len(pairs))
        chunk_len = triton.cdiv(d, wanted)
    chunk_len = triton.cdiv(max(1, chunk_len), step) * step
    num_chunks = triton.cdiv(d, chunk_len)
    tiles = torch.tensor(pairs, dtype=torch.int32, device=x.device)
    partial = torch.empty(num_chunks, n, n, dtype=torch.float32, device=x.device)
    _pairwise_sq_dist_kernel[(num_chunks, len(pairs))](
        x, tiles, partial, n, d, chunk_len, x.stride(0), x.stride(1),
        BLOCK_I=block_i, BLOCK_K=block_k, INNER=inner)
    return partial[0] if num_chunks == 1 else partial.sum(dim=0)


def _finalize(raw: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    far = ~(finite[:, None] & finite[None, :])
    dist = raw.masked_fill(far, float("inf"))
    dist.fill_diagonal_(0.0)
    return dist


def sq_distances_triton(x: torch.Tensor, **tuning) -> tuple[torch.Tensor, torch.Tensor]:
    """(dist [n, n] with the reference's semantics, finite [n] bool) from the Triton kernel."""
    raw = _raw_sq_distances_triton(x, **tuning)
    finite = ~torch.isnan(raw.diagonal())
    return _finalize(raw, finite), finite


def _chunk_sq_distances(chunk: torch.Tensor, centre: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """float64 [n, n] Σ (a − b)² over chunk's columns from the Gram matrix of chunk − centre (exact shift).

    buf: a float64 [n, >= chunk's columns] scratch tensor, reused across chunks: a fresh 2 MB tensor per
    chunk is returned to the OS and faulted in again every time (measured 3x slower in total).
    """
    z = buf[:, :chunk.shape[1]]
    z.copy_(chunk).sub_(centre.double())     # in float64: the float32 difference would round
    gram = z @ z.T
    sq = gram.diagonal()
    return sq[:, None] + sq[None, :] - 2.0 * gram


def _difference_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """[n, n] Σ (x_j − x_i)², row i at a time, with the reference's operations (its values bit for bit)."""
    n = x.shape[0]
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    buf = torch.empty_like(x)
    for i in range(n):
        torch.sub(x, x[i], out=buf).square_()
        torch.sum(buf, dim=1, out=out[i])
    return out


def _median_distances(part: torch.Tensor) -> torch.Tensor:
    """[n] each row's median distance to the rows (NaN counts as far): small for rows inside the cluster."""
    return part.nan_to_num(nan=float("inf")).median(dim=1).values


def _shifted_gram_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """float64 [n, n] distances of float32 rows from Gram matrices of chunks shifted by a central row.

    The centre carries over from chunk to chunk (row 0 to start); a chunk in which it lies far from
    the others (an outlying centre would bring the cancellation back) is recomputed around the chunk's
    most central row (smallest median distance), so outlying rows cannot degrade the others' distances.
    """
    n, d = x.shape
    step = max(1, CPU_CHUNK_ELEMENTS // n) if x.device.type == "cpu" else d
    acc = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    buf = torch.empty(n, min(step, d), dtype=torch.float64, device=x.device)
    centre = 0
    for c0 in range(0, d, step):
        chunk = x[:, c0:c0 + step]
        part = _chunk_sq_distances(chunk, chunk[centre].nan_to_num(0.0, 0.0, 0.0), buf)
        spread = _median_distances(part)
        best = int(spread.argmin())
        if best != centre and spread[centre] > 4.0 * spread[best]:
            centre = best
            part = _chunk_sq_distances(chunk, chunk[centre].nan_to_num(0.0, 0.0, 0.0), buf)
        acc += part
    return acc


def sq_distances_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dist [n, n] with the reference's semantics, finite [n] bool), in x's dtype.

    float32: the shifted Gram path, float64: the reference's difference sums (see the module docstring).
    Both keep exact ties exact (integers, duplicated rows), so NNM breaks them by index as the
    reference does (a sqrt per chunk, as torch.pdist takes, would round such ties apart), and both
    keep values ~1e4 with spread 1e-3 apart (the raw values' Gram would cancel them away).
    """
    if x.dtype == torch.float64:
        raw = _difference_sq_distances(x.contiguous())
    else:
        raw = _shifted_gram_sq_distances(x).to(x.dtype)
    raw.fill_diagonal_(0.0)
    # A finite distance proves both rows finite; only rows without one need a look at their values.
    proven = torch.isfinite(raw).sum(dim=1) > 1
    finite = proven.clone()
    suspects = (~proven).nonzero().flatten()
    if suspects.numel():
        finite[suspects] = torch.isfinite(x[suspects]).all(dim=1)
    return _finalize(raw, finite), finite


def unsupported_reason(x: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take this submission matrix (None when they can)."""
    n, d = x.shape
    if x.dtype != torch.float32:
        return f"the Triton kernels take float32 submissions, got {x.dtype} (use backend='torch')"
    if n > MAX_ROWS:
        return f"n={n} rows is out of range: valid 1 <= n <= {MAX_ROWS} (use backend='torch')"
    if d > MAX_COLS:
        return f"d={d} columns is out of range: valid 1 <= d <= {MAX_COLS}"
    if _backend.needs_grad(x):
        return "the Triton kernels have no autograd (x requires grad)"
    return None


def pairwise_sq_distances(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """[n, n] squared Euclidean distances, +inf for pairs with a non-finite row, 0 on the diagonal."""
    check_matrix("x", x)
    chosen = _backend.choose(backend, x, _pairwise_sq_dist_kernel, unsupported_reason(x))
    if chosen == "triton":
        return sq_distances_triton(x)[0]
    if _backend.needs_grad(x):
        return reference.pairwise_sq_distances(x)
    if x.dtype == torch.float64:  # the reference's own row-by-row arithmetic: many tiny ops, one thread
        with torch.no_grad(), one_cpu_thread(x.device):
            return sq_distances_torch(x)[0]
    # float32: a few large float64 Gram products, which gain from a second thread (Krum at n = 32,
    # d = 10^6: 352 -> 108 ms on this 2-core machine) where the many small ops of the rules do not.
    with torch.no_grad():
        return sq_distances_torch(x)[0]
