"""Bounds the validator checks beyond each option's own range: integer sizes, memory, readable state files.

Every integer option is bounded from above, so that a typo (`--steps 1e20` as an int, `--seed
99999999999999999999`) is one line at the start, not an overflow mid-run: seeds to [0, 2**63 − 1] (what
torch and numpy take as a 64-bit seed), counts to MAX_COUNT. A run whose estimated peak memory
(byzbn.runs.memory) exceeds the memory available is refused with the estimate.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from byzbn.runs.errors import ArgumentError, check, one_line

MAX_SEED = 2 ** 63 - 1
MAX_COUNT = 10 ** 9  # steps, clients, batch size, intervals: far beyond any run that can finish
# Integer options bounded by MAX_COUNT (None-able ones are checked when given).
COUNTS = ("clients", "byzantine", "steps", "batch_size", "eval_every", "checkpoint_every", "groups", "local_steps")


def check_integer_bounds(args: argparse.Namespace) -> None:
    """Every integer option within its upper bound (lower bounds are the range checks' own)."""
    seed = getattr(args, "seed", 0)
    check(0 <= seed <= MAX_SEED, f"--seed={seed} is out of range: valid [0, 2**63 - 1 = {MAX_SEED}]")
    for dest in COUNTS:
        value = getattr(args, dest, None)
        check(value is None or value <= MAX_COUNT,
              f"--{dest.replace('_', '-')}={value} is out of range: valid <= {MAX_COUNT:,}")


# (model, input shape, classes, width) -> the estimate for one client of batch 1 (None: not estimable),
# measured once per process: a sweep's points share their models.
_SHAPES: dict = {}


def check_memory(args: argparse.Namespace, dataset) -> None:
    """Refuse a run whose estimated peak memory exceeds what is available (byzbn.runs.memory)."""
    from torch import cuda
    from torch import device as torch_device

    from byzbn.runs.memory import LIMIT_ENV, available_bytes, estimate, gb

    def build():  # the model with its ordinary BN: the shapes do not depend on the scheme's normalization
        from byzbn.nn.zoo import plain_model

        return plain_model(args.model, dataset.input_shape, dataset.num_classes, args.width)

    try:
        on_gpu = args.device == "cuda" or (args.device == "auto" and cuda.is_available())  # where it trains
        limit = available_bytes(torch_device("cuda") if on_gpu else None)
    except ValueError as error:
        raise ArgumentError(one_line(error)) from error
    if limit is None:
        return
    shape_key = (getattr(args, "model", None), dataset.input_shape, dataset.num_classes, args.width)
    if shape_key not in _SHAPES:  # one meta forward per model and width, however many points share them
        _SHAPES[shape_key] = estimate(build, dataset.input_shape, 1, 1)
    one = _SHAPES[shape_key]
    peak = None if one is None else replace(one, clients=args.clients, stacked_batch=args.clients * args.batch_size)
    if peak is None:  # a model that cannot be built on the meta device: not estimated, not refused
        return
    check(peak.bytes <= limit,
          f"--width={args.width} with --clients={args.clients} and --batch-size={args.batch_size} needs about "
          f"{gb(peak.bytes)} ({peak.parameters:,} parameters, {peak.activations:,} activations per sample), "
          f"more than the {gb(limit)} available: lower them, or set {LIMIT_ENV} to allow more")


def read_json_argument(path: Path, flag: str) -> dict:
    """A JSON object file a command was pointed at (by `flag`), or one line saying why it cannot be used."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ArgumentError(f"{flag}: cannot read {path} ({type(error).__name__}: {one_line(error)}): "
                            f"it is damaged or truncated") from error
    check(isinstance(data, dict), f"{flag}: {path} does not hold a JSON object: it is damaged")
    return data


__all__ = ["MAX_SEED", "MAX_COUNT", "COUNTS", "check_integer_bounds", "check_memory", "read_json_argument"]
