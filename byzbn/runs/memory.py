"""A run's peak memory, estimated before anything is built, and the memory there is to hold it.

The estimate counts what a step keeps alive, in float32:

    parameters        P            the global model
    gradients         P            the server's gradient / aggregate
    per client        4 · n · P    each client's momentum, its gradient (or, under FedAvg, its model
                                   copy), and the [n, P] submission matrix with a pre-aggregated copy
    activations       2 · A · n·B  the stacked batch's activations kept for backward (A per sample,
                                   measured by one forward on the meta device, i.e. shapes only), and
                                   as much again for the per-client backward
    evaluation        2 · M · 1000 the two largest activations of one evaluation batch (1000 samples)

It is an estimate from above for the CNNs byzbn trains (a few extra copies are counted as the margin),
not an allocator trace: its purpose is to refuse, in one line and before anything is written, a run that
cannot fit (`--width 40` asks for hundreds of GB), never to squeeze the last gigabyte.

The limit is the memory available now: MemAvailable of /proc/meminfo on CPU, the free memory of the
device on CUDA. The environment variable BYZBN_MAX_MEMORY_GB replaces it (e.g. on a machine whose
/proc/meminfo does not tell, or to allow a run the estimate over-counts).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

BYTES_PER_FLOAT = 4
EVAL_BATCH = 1000  # byzbn.fl.evaluation.evaluate_model's batch
LIMIT_ENV = "BYZBN_MAX_MEMORY_GB"
GB = 1024 ** 3


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of a run, and its parts."""

    parameters: int      # P: numbers in the model
    activations: int     # A: activation numbers of one sample's forward
    largest: int         # M: the largest activation of one sample
    clients: int         # n
    stacked_batch: int   # n · B

    @property
    def bytes(self) -> int:
        p, a, n = self.parameters, self.activations, self.clients
        numbers = (2 + 4 * n) * p + 2 * a * self.stacked_batch + 2 * self.largest * EVAL_BATCH
        return numbers * BYTES_PER_FLOAT


def model_shapes(build: Callable[[], nn.Module], input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(parameters, activation numbers of one sample, largest activation) of the model `build()` makes.

    Built and run on the meta device: shapes only, no memory and no arithmetic, whatever the width.
    """
    with torch.device("meta"):
        model = build()
        parameters = sum(p.numel() for p in model.parameters())
        sizes: list[int] = []

        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and not list(module.children()):
                sizes.append(output.numel())

        hooks = [m.register_forward_hook(record) for m in model.modules()]
        try:
            model(torch.empty((1, *input_shape)))
        finally:
            for hook in hooks:
                hook.remove()
    return parameters, sum(sizes), max(sizes, default=0)


def estimate(build: Callable[[], nn.Module], input_shape: tuple[int, int, int], clients: int,
             batch_size: int) -> Optional[Estimate]:
    """The peak memory of a run of `clients` clients, `batch_size` samples each, training build()'s model.

    None when the model cannot be built or run on the meta device (a plugin model that reads its
    tensors' values): then there is no estimate, and the model's own build reports what is wrong.
    """
    try:
        parameters, activations, largest = model_shapes(build, input_shape)
    except Exception:  # noqa: BLE001 - any failure here only means "no estimate"; the real build follows
        return None
    return Estimate(parameters, activations, largest, clients, clients * batch_size)


def available_bytes(device: Optional[torch.device] = None) -> Optional[int]:
    """The memory a run may use: BYZBN_MAX_MEMORY_GB if set, else what the machine (or GPU) has free now.

    None when it cannot be told (no /proc/meminfo): then nothing is refused.
    """
    override = os.environ.get(LIMIT_ENV)
    if override:
        try:
            value = float(override)
        except ValueError as error:
            raise ValueError(f"{LIMIT_ENV}={override!r} is not a number of GB") from error
        if not value > 0:
            raise ValueError(f"{LIMIT_ENV}={override!r} is out of range: valid > 0 (GB)")
        return int(value * GB)
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gb(n_bytes: int) -> str:
    return f"{n_bytes / GB:.3g} GB"


__all__ = ["Estimate", "LIMIT_ENV", "model_shapes", "estimate", "available_bytes", "gb"]
