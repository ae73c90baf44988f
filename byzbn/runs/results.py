"""What an attack_eval run writes: metrics.jsonl, summary.json/.csv, curves.png, the table, checkpoints.

Every file is written atomically (a temporary file in the same directory, then os.replace), so a run
killed at any instant leaves either the previous version or the new one, never a torn file. Files read
back instead of recomputed (checkpoints, the store's result.json) also carry a checksum, written last
beside them (FILE.sha256): a file that fails it (edited, truncated, from another disk) is never used.
metrics.jsonl holds only quantities that are deterministic on CPU for a given seed (no wall-clock
times: those go to summary.json), so two runs with the same arguments write identical files.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import torch

SUMMARY_FIELDS = ("scheme", "scenario", "final_acc", "best_acc", "status", "steps_done", "comm_rounds",
                  "stats_clamped", "wall_s")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to path atomically: a temporary file beside it, fsynced, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


class CorruptFile(Exception):
    """A file that fails its checksum or cannot be read; the message is one line naming it."""


def checksum_path(path: Path) -> Path:
    """The checksum written beside `path`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_checked(path: Path, data: bytes) -> None:
    """Write `data` to path atomically, then its sha256 beside it (last: a file whose checksum matches is whole)."""
    atomic_write_bytes(path, data)
    atomic_write_text(checksum_path(path), hashlib.sha256(data).hexdigest() + "\n")


def read_checked(path: Path) -> bytes:
    """The bytes of a file written by `write_checked`; CorruptFile when it or its checksum is unreadable or they
    disagree (a missing `path` is FileNotFoundError: nothing was written)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        expected = checksum_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CorruptFile(f"{path} has no readable checksum ({checksum_path(path).name}: "
                          f"{type(error).__name__})") from error
    if hashlib.sha256(data).hexdigest() != expected:
        raise CorruptFile(f"{path} fails its checksum (edited or truncated)")
    return data


_reported: set[tuple] = set()


def report_corrupt(error: BaseException, consequence: str, path: Optional[Path] = None) -> None:
    """One line on stderr: which file cannot be used, and what happens instead (once per version of `path`)."""
    line = f"warning: {' '.join(str(error).split())}; {consequence}"
    try:
        version = (line, os.stat(path).st_mtime_ns, os.stat(path).st_size) if path is not None else None
    except OSError:
        version = None
    if version is None or version not in _reported:
        _reported.add(version)
        print(line, file=sys.stderr, flush=True)


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save `state` to path atomically, with its checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_checked(path, buffer.getvalue())


def load_checkpoint(path: Path) -> Optional[dict]:
    """The checkpoint at path; None when there is none yet, or (with a one-line warning) when it fails its
    checksum or cannot be loaded: the run then restarts from scratch."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(io.BytesIO(read_checked(path)), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "finished" not in state:
            raise CorruptFile(f"{path} is not a checkpoint")
    except CorruptFile as error:
        report_corrupt(error, "the run restarts from scratch", path)
        return None
    except Exception as error:  # noqa: BLE001 - whatever torch raises on a damaged file: it is not used
        report_corrupt(CorruptFile(f"{path} cannot be loaded ({type(error).__name__})"),
                       "the run restarts from scratch", path)
        return None
    return state


def finite_or_none(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN/Inf: non-finite numbers are written as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def run_key(scheme: str, scenario: str) -> str:
    """A file-name-safe key for one run."""
    return f"{scheme}__{scenario.replace('+', '_plus_')}"


def defense_label(pre: str, rule: str) -> str:
    """'nnm∘median': config.json's --pre (comma-separated, or 'none') in the order they apply, then the rule."""
    return "∘".join([name for name in pre.split(",") if name and name != "none"] + [rule])


def entry_line(scheme: str, scenario: str, entry: dict) -> str:
    """The line a command prints when a scheme × scenario run ends: final, best, wall time, status."""
    mark = "" if entry["status"] == "ok" else f"  [{entry['status']}]"
    return (f"{scheme:>12} / {scenario:<15} final {100 * entry['final_acc']:5.1f}%  "
            f"best {100 * entry['best_acc']:5.1f}%  ({entry['wall_s']:.1f} s){mark}")


def curves_title(config) -> str:
    """curves.png's title (of a RunConfig): the data, the partition, n, f, the attack and its channel, the defense."""
    c = config
    return (f"{c.dataset}, {c.heterogeneity}, n={c.clients}, f={c.byzantine}, attack={c.attack} "
            f"on {c.target}, defense={defense_label(c.pre, c.defense)}")


def write_metrics(path: Path, records: Iterable[dict]) -> None:
    """metrics.jsonl: one JSON object per evaluation point, in run order then step order."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def write_summary(out: Path, summary: list[dict], schemes: list[str], scenarios: list[str]) -> None:
    """summary.json ({scheme: {scenario: entry}}) and summary.csv (one row per run)."""
    nested: dict = {}
    for entry in summary:
        nested.setdefault(entry["scheme"], {})[entry["scenario"]] = {k: v for k, v in entry.items()
                                                                      if k not in ("scheme", "scenario")}
    atomic_write_text(out / "summary.json", json.dumps(nested, indent=2, sort_keys=True) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for entry in summary:
        writer.writerow({k: entry.get(k) for k in SUMMARY_FIELDS})
    atomic_write_text(out / "summary.csv", text.getvalue())


def format_table(summary: list[dict], schemes: list[str], scenarios: list[str]) -> str:
    """Final and best test accuracy per scheme (rows) × scenario (columns); '!' marks a diverged run."""
    cells = {(e["scheme"], e["scenario"]): e for e in summary}
    head = ["scheme"] + [f"{s} final / best" for s in scenarios]
    rows = [head]
    for scheme in schemes:
        row = [scheme]
        for scenario in scenarios:
            e = cells.get((scheme, scenario))
            if e is None:
                row.append("-")
                continue
            mark = "!" if e["status"] != "ok" else ""
            row.append(f"{100 * e['final_acc']:5.1f}{mark} / {100 * e['best_acc']:5.1f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"! {e['scheme']} / {e['scenario']}: {e['status']}" for e in summary if e["status"] != "ok"]
    return "\n".join(lines + notes) + "\n"


def plot_curves(path: Path, records: list[dict], schemes: list[str], scenarios: list[str], title: str = "") -> None:
    """curves.png: test accuracy against step, one panel per scenario, one line per scheme.

    Runs that exist only without attack (the centralized reference) are drawn dashed in every panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict = {}
    for r in records:
        runs.setdefault((r["scheme"], r["scenario"]), []).append((r["step"], r["test_acc"]))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.4), sharey=True, squeeze=False)
    colors = {s: f"C{i}" for i, s in enumerate(schemes)}
    for ax, scenario in zip(axes[0], scenarios):
        for scheme in schemes:
            points = runs.get((scheme, scenario))
            style = "-"
            if points is None and scenario != "no-attack" and (scheme, "no-attack") in runs \
                    and not any(k[0] == scheme and k[1] != "no-attack" for k in runs):
                points, style = runs[(scheme, "no-attack")], "--"
            if not points:
                continue
            steps, accs = zip(*sorted(points))
            ax.plot(steps, [100 * a for a in accs], style, color=colors[scheme], label=scheme)
        ax.set_title(scenario)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].set_ylim(0, 100)
    axes[0][-1].legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


__all__ = ["SUMMARY_FIELDS", "atomic_write_bytes", "atomic_write_text", "CorruptFile", "checksum_path",
           "write_checked", "read_checked", "report_corrupt", "save_checkpoint", "load_checkpoint",
           "finite_or_none", "run_key", "defense_label", "entry_line", "curves_title", "write_metrics",
           "write_summary", "format_table", "plot_curves"]
