"""What `--diagnostics` adds to a run's outputs: the record keys, summary.json's final and mean values, and
diagnostics.png (the measurements themselves: byzbn.runs.diagnostics_run).

The averaged diagnostics (DESIGN.md §13) are recorded at each evaluation as diag_<name>; a run's summary
entry (summary.json, a sweep's results.csv) holds final_diag_<name> (the last evaluation's) and
mean_diag_<name> (the mean over the evaluations that have a value; null when none has).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

from byzbn.runs.results import atomic_write_bytes

# The averaged diagnostics, in the order plots and tables show them.
FIELDS = ("share", "mismatch_mean", "mismatch_var", "honest_mismatch_mean", "honest_mismatch_var", "grad_deviation",
          "reach_stats", "reach_grads")
PER_LAYER = FIELDS[:5]
LAYERS_KEY = "diag_layers"
TITLES = {"share": "between-client share", "mismatch_mean": "running vs probe: mean",
          "mismatch_var": "running vs probe: var", "honest_mismatch_mean": "honest-only shadow: mean",
          "honest_mismatch_var": "honest-only shadow: var", "grad_deviation": "gradient deviation",
          "reach_stats": "attack reach: statistics", "reach_grads": "attack reach: gradients"}


def record_key(name: str) -> str:
    """The metrics.jsonl key of the averaged diagnostic `name`."""
    return f"diag_{name}"


# A summary entry's (and results.csv's) diagnostic columns.
SUMMARY_COLUMNS = tuple(f"{kind}_{record_key(name)}" for name in FIELDS for kind in ("final", "mean"))


def summary_fields(records: list[dict]) -> dict:
    """final_diag_<name> and mean_diag_<name> of one run's evaluation records."""
    out: dict = {}
    for name in FIELDS:
        values = [r.get(record_key(name)) for r in records]
        present = [v for v in values if v is not None]
        out[f"final_{record_key(name)}"] = values[-1] if values else None
        out[f"mean_{record_key(name)}"] = sum(present) / len(present) if present else None
    return out


def plot_diagnostics(path: Path, records: list[dict], title: str = "") -> None:
    """diagnostics.png: one panel per averaged diagnostic against step, one line per scheme / scenario run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict = {}
    for r in records:
        runs.setdefault(f"{r['scheme']} / {r['scenario']}", []).append(r)
    columns = 4
    rows = math.ceil(len(FIELDS) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, FIELDS):
        for i, (label, points) in enumerate(runs.items()):
            xy = [(p["step"], p[record_key(name)]) for p in points if p.get(record_key(name)) is not None]
            if xy:
                steps, values = zip(*sorted(xy))
                ax.plot(steps, values, "-o", markersize=2.5, color=f"C{i % 10}", label=label)
        ax.set_title(TITLES[name], fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(FIELDS):]:
        ax.axis("off")
    handles, labels = _legend(axes)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _legend(axes) -> tuple[list, list]:
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


def has_diagnostics(entry: Optional[dict]) -> bool:
    """Whether a summary entry carries diagnostic columns."""
    return entry is not None and SUMMARY_COLUMNS[0] in entry


__all__ = ["FIELDS", "PER_LAYER", "LAYERS_KEY", "TITLES", "record_key", "SUMMARY_COLUMNS", "summary_fields",
           "plot_diagnostics", "has_diagnostics"]
