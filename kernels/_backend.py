"""Which implementation a kernel dispatch runs: shared by every op in byzbn.kernels.

backend="auto" picks the Triton kernel for CUDA tensors it can handle and the torch path otherwise;
"triton" insists (and raises a ValueError saying why when it cannot run); "torch" never touches Triton.
Triton on CPU tensors exists only through the interpreter (TRITON_INTERPRET=1 set before byzbn.kernels
is imported), which the tests use.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

BACKENDS = ("auto", "triton", "torch")


def is_interpreted(kernel) -> bool:
    """True when `kernel` was decorated while TRITON_INTERPRET=1, i.e. it runs on CPU tensors."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def needs_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def choose(backend: str, x: torch.Tensor, kernel, unsupported: str | None) -> str:
    """'triton' or 'torch' for this call.

    unsupported: None when the Triton kernel can compute this input, otherwise the reason it cannot
    (dtype, size, autograd). auto then falls back to torch; an explicit "triton" raises it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    runnable = x.is_cuda or is_interpreted(kernel)
    if backend == "auto":
        return "triton" if x.is_cuda and unsupported is None else "torch"
    if not runnable:
        raise ValueError(f"backend='triton' needs a CUDA tensor, got one on {x.device} (on CPU the Triton kernels "
                         "run only under TRITON_INTERPRET=1, set before byzbn.kernels is imported)")
    if unsupported is not None:
        raise ValueError(f"backend='triton' cannot compute this input: {unsupported}")
    return "triton"


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill (a small constant under the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


@contextmanager
def one_cpu_thread(x: torch.Tensor):
    """Run the CPU fast paths' many cache-sized ops on one intra-op thread, restoring the setting after.

    Each op is a few microseconds of work; with a second OpenMP thread every op ends in a barrier,
    and on a shared machine (2 cores, other jobs running) waiting for that thread made the paths
    5-10x slower than one thread (e.g. NNM + median at n=32, d=10^6: 1.1-1.9 s vs 0.26-0.29 s).
    """
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
