"""Split a labelled dataset across clients: IID, gamma-similarity (FBN paper), Dirichlet, extreme non-IID.

Every partition gives each of the n clients the same number of samples, floor(N / n) (the remainder
is dropped at random), as disjoint int64 index tensors sorted ascending. All randomness comes from a
numpy Generator seeded by `seed`, so a (labels, n, spec, seed) tuple always yields the same split.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from byzbn._checks import check_int

PARTITION_KINDS = ("iid", "gamma:G", "dirichlet:A", "extreme")


def _invalid(spec, reason: str) -> ValueError:
    return ValueError(f"partition {spec!r} is invalid ({reason}): valid forms are "
                      f"{', '.join(PARTITION_KINDS)} with G in [0, 1] and A > 0")


def parse_partition(spec: str) -> tuple[str, float | None]:
    """("iid", None), ("gamma", G), ("dirichlet", A) or ("extreme", None); extreme is gamma:0."""
    if not isinstance(spec, str):
        raise _invalid(spec, f"expected a str, got {type(spec).__name__}")
    if spec in ("iid", "extreme"):
        return spec, None
    kind, sep, value_text = spec.partition(":")
    if not sep or kind not in ("gamma", "dirichlet"):
        raise _invalid(spec, "unknown kind")
    try:
        value = float(value_text)
    except ValueError:
        raise _invalid(spec, f"{value_text!r} is not a number") from None
    if kind == "gamma" and not 0.0 <= value <= 1.0:
        raise _invalid(spec, f"G={value} is outside [0, 1]")
    if kind == "dirichlet" and not (value > 0.0 and math.isfinite(value)):
        raise _invalid(spec, f"A={value} must be finite and > 0")
    return kind, value


def partition(labels: torch.Tensor, n_clients: int, spec: str, seed: int) -> list[torch.Tensor]:
    """n_clients disjoint int64 index tensors into `labels`, each of size floor(N / n_clients).

    - iid: a uniformly random equal split.
    - gamma:G (gamma-similarity, FBN paper §4 "Modeling heterogeneity"): each client draws a fraction G
      of its share uniformly at random from a homogeneous pool, and gets the rest as one consecutive
      chunk of the remaining data sorted by label. G=1 is IID; G=0 ("extreme") gives every client a
      contiguous range of labels (one or two labels when classes are balanced and n = num_classes).
    - dirichlet:A: each client's class proportions are drawn from Dir(A, ..., A); clients fill up
      greedily from the class pools and, when a wanted class runs out, from the classes left.
    """
    labels_np = _labels_array(labels)
    n = len(labels_np)
    check_int("n_clients", n_clients, 1, n, why="every client needs at least one sample")
    check_int("seed", seed, 0)
    kind, value = parse_partition(spec)
    rng = np.random.default_rng(seed)
    share = n // n_clients
    if kind == "iid":
        parts = _gamma_similar(labels_np, n_clients, share, 1.0, rng)
    elif kind == "extreme":
        parts = _gamma_similar(labels_np, n_clients, share, 0.0, rng)
    elif kind == "gamma":
        parts = _gamma_similar(labels_np, n_clients, share, value, rng)
    else:
        parts = _dirichlet(labels_np, n_clients, share, value, rng)
    return [torch.from_numpy(np.sort(part).astype(np.int64)) for part in parts]


def label_histogram(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """int64 [n_clients, num_classes]: how many samples of each class every client holds."""
    labels_np = _labels_array(labels)
    check_int("num_classes", num_classes, 1)
    if len(labels_np) and labels_np.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
                         f"got max {labels_np.max()}")
    rows = []
    for i, part in enumerate(parts):
        if not isinstance(part, torch.Tensor) or part.dim() != 1 or part.dtype != torch.int64:
            raise ValueError(f"parts[{i}] must be a 1-D int64 index tensor")
        rows.append(np.bincount(labels_np[part.numpy()], minlength=num_classes))
    return torch.from_numpy(np.stack(rows).astype(np.int64)) if rows else torch.zeros(0, num_classes, dtype=torch.int64)


def _labels_array(labels) -> np.ndarray:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() < 1:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    labels_np = labels.detach().cpu().numpy().astype(np.int64)
    if labels_np.min() < 0:
        raise ValueError(f"labels must be >= 0, got min {labels_np.min()}")
    return labels_np


def _gamma_similar(labels: np.ndarray, n_clients: int, share: int, gamma: float, rng) -> list[np.ndarray]:
    # The paper splits the data into a homogeneous part of size gamma*N dealt uniformly at random and
    # a heterogeneous part sorted by label and cut into n consecutive chunks. Rounding gamma*share per
    # client (not gamma*N overall) keeps the client datasets exactly equal in size.
    kept = rng.permutation(len(labels))[: n_clients * share]  # drops the remainder at random
    homogeneous_each = math.floor(gamma * share + 0.5)
    homogeneous = kept[: n_clients * homogeneous_each].reshape(n_clients, homogeneous_each)
    rest = kept[n_clients * homogeneous_each:]
    # A stable sort of a random order: labels ascend, equal labels stay randomly ordered.
    heterogeneous = rest[np.argsort(labels[rest], kind="stable")].reshape(n_clients, share - homogeneous_each)
    return [np.concatenate([homogeneous[i], heterogeneous[i]]) for i in range(n_clients)]


def _dirichlet(labels: np.ndarray, n_clients: int, share: int, alpha: float, rng) -> list[np.ndarray]:
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    remaining = np.array([len(pool) for pool in pools], dtype=np.int64)
    proportions = rng.dirichlet(np.full(len(classes), alpha), size=n_clients)
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n_clients
    # A random filling order, so that no client index is systematically served first.
    for client in rng.permutation(n_clients):
        taken = np.zeros(len(classes), dtype=np.int64)
        needed = share
        # Total supply left >= share, and each pass either fills the client or empties a class.
        while needed > 0:
            open_classes = np.flatnonzero(remaining > 0)
            weights = proportions[client, open_classes]
            if not weights.sum() > 0:  # the wanted classes are used up (or Dir underflowed to 0)
                weights = remaining[open_classes].astype(np.float64)
            wanted = _round_to_total(weights / weights.sum() * needed, needed)
            grant = np.minimum(wanted, remaining[open_classes])
            remaining[open_classes] -= grant
            taken[open_classes] += grant
            needed -= int(grant.sum())
        # Each pool is consumed from its end, in its (random) order.
        parts[client] = np.concatenate([pools[k][remaining[k]: remaining[k] + taken[k]]
                                        for k in range(len(classes))])
    return parts


def _round_to_total(amounts: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder rounding of non-negative `amounts` (summing to `total`) to integers summing to `total`."""
    floor = np.floor(amounts).astype(np.int64)
    shortfall = total - int(floor.sum())
    if shortfall > 0:
        order = np.argsort(-(amounts - floor), kind="stable")
        floor[order[:shortfall]] += 1
    return floor
