"""Which implementation a kernel dispatch runs: shared by every op in byzbn.kernels.

backend="auto" picks the Triton kernel for CUDA tensors it can handle and the torch path otherwise;
"triton" insists (and raises a ValueError saying why when it cannot run); "torch" never touches Triton.
Triton on CPU tensors exists only through the interpreter (TRITON_INTERPRET=1 set before byzbn.kernels
is imported), which the tests use.
"""
from __future__ import annotations

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
