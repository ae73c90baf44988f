"""table.md, report.md and the docs page of a sweep: the worst case over attacks in words and numbers.

Everything is computed from results.csv's rows (byzbn.grid.worst) and the sweep's record (sweep.json:
the command, the grid, the counts and times), so a page regenerated from a stored sweep is the same.
"""
from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Optional

from byzbn.grid.table import markdown_lines
from byzbn.grid.worst import METRICS, NO_ATTACK, axes_of, breakdown_points, panel_text, reference, worst_case
from byzbn.runs.results import atomic_write_text


def _pct(value) -> str:
    if value is None:
        return "–"
    return f"{100 * value.mean:.1f}" + (f" ± {100 * value.std:.1f}" if value.std is not None else "")


def _clients(rows: list[dict], f: int) -> int:
    return next(r["clients"] for r in rows if r["byzantine"] == f)


def worst_case_tables(rows: list[dict], metric: str = "final_acc") -> str:
    """Markdown: per heterogeneity (× panel) a table f × (scheme: no attack, then each defense), the worst
    case over attacks in each cell (its attack in brackets when there are several) and the best defended
    or undefended combination of each row in bold."""
    worst, ref, axes = worst_case(rows, metric), reference(rows, metric), axes_of(rows)
    several = len({(r["attack"], r.get("attack_param")) for r in rows if r["scenario"] != "no-attack"}) > 1
    seeds = len({r["seed"] for r in rows})
    lines = [f"Worst case over attacks of the {METRICS.get(metric, metric)} (%), "
             f"{'mean ± std over ' + str(seeds) + ' seeds' if seeds > 1 else '1 seed'}; "
             f"best combination per row in bold; `{NO_ATTACK}` is the reference.", ""]
    for het in axes["heterogeneities"]:
        for panel in axes["panels"]:
            columns = [(s, d) for s in axes["schemes"] for d in [NO_ATTACK] + axes["defenses"]]
            cells = {}
            for f in axes["fs"]:
                for scheme, defense in columns:
                    cells[(f, scheme, defense)] = (ref.get((scheme, panel, het, f)) if defense == NO_ATTACK
                                                   else worst.get((scheme, defense, panel, het, f)))
            columns = [c for c in columns if any(cells[(f, *c)] is not None for f in axes["fs"])]
            body = []
            for f in axes["fs"]:
                values = [cells[(f, *c)] for c in columns]
                if all(v is None for v in values):
                    continue
                attacked = [v.mean for v, (_, d) in zip(values, columns) if v is not None and d != NO_ATTACK]
                best = max(attacked) if attacked else None
                row = [f"{f} ({f / _clients(rows, f):.2f})"]
                for v, (_, d) in zip(values, columns):
                    text = _pct(v) + (f" ({v.attack})" if v is not None and several and v.attack else "")
                    row.append(f"**{text}**" if v is not None and d != NO_ATTACK and v.mean == best else text)
                body.append(row)
            if not body:
                continue
            lines += [f"### heterogeneity {het}" + (f", {panel_text(panel)}" if panel else ""), ""]
            lines += markdown_lines(["f (f/n)"] + [f"{s}: {d}" for s, d in columns], body) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def breakdown_table(rows: list[dict], tolerance: float, metric: str = "final_acc") -> str:
    """Markdown: the breakdown point (largest f/n within tolerance of no-attack) per scheme × defense."""
    points, axes = breakdown_points(worst_case(rows, metric), reference(rows, metric), tolerance), axes_of(rows)
    head = ["scheme", "defense"] + [f"{het}" + (f", {panel_text(p)}" if p else "")
                                    for het in axes["heterogeneities"] for p in axes["panels"]]
    body = []
    for scheme in axes["schemes"]:
        for defense in axes["defenses"]:
            keys = [(scheme, defense, p, het) for het in axes["heterogeneities"] for p in axes["panels"]]
            if not any(k in points for k in keys):
                continue
            body.append([scheme, defense] + ["–" if points.get(k) is None else f"{points[k]:.2f}" for k in keys])
    intro = (f"Breakdown point: the largest f/n up to which the worst case over attacks stays within "
             f"{100 * tolerance:g} points of the no-attack accuracy at every f of the grid (– : not even at the "
             f"smallest f). Columns: heterogeneity.")
    return "\n".join([intro, ""] + markdown_lines(head, body)) + "\n"


def findings(rows: list[dict], tolerance: float, metric: str = "final_acc") -> list[str]:
    """What the figures show, per heterogeneity (× panel): the most robust scheme × defense (highest mean of
    its worst case over the grid's f > 0) and the undefended worst case at the largest f."""
    worst, axes = worst_case(rows, metric), axes_of(rows)
    points = breakdown_points(worst, reference(rows, metric), tolerance)
    out = []
    for het in axes["heterogeneities"]:
        for panel in axes["panels"]:
            where = f"heterogeneity {het}" + (f" ({panel_text(panel)})" if panel else "")
            scores = {}
            for (scheme, defense, p, h, f), value in worst.items():
                if (p, h) == (panel, het) and f > 0:
                    scores.setdefault((scheme, defense), []).append(value.mean)
            if not scores:
                continue
            (scheme, defense), means = max(scores.items(), key=lambda item: statistics.fmean(item[1]))
            point = points.get((scheme, defense, panel, het))
            out.append(f"At {where}, the most robust combination is {scheme} with {defense}: "
                       f"{100 * statistics.fmean(means):.1f}% worst-case accuracy on average over f > 0, breakdown "
                       f"point {'below the smallest f/n' if point is None else f'{point:.2f}'}.")
            top = max(axes["fs"])
            for s in axes["schemes"]:
                value = worst.get((s, "no defense", panel, het, top))
                if value is not None:
                    worst_attack = value.attack or "several attacks tie"
                    out.append(f"At {where}, {s} without defense falls to {100 * value.mean:.1f}% at f = {top} "
                               f"(worst attack: {worst_attack}).")
    return out


def _grid_lines(record: dict) -> list[str]:
    axes = record["axes"]
    lines = markdown_lines(["swept option", "values"], [[k, ", ".join(map(str, v))] for k, v in axes.items()])
    fixed = ", ".join(f"{k}={v if v != '' else 'default'}" for k, v in record["fixed"].items() if k != "plugin")
    lines += ["", f"Fixed (attack_eval's options; default: attack_eval's own choice): {fixed}."]
    unattacked = record.get("unattacked") or {}
    if unattacked:
        lines += ["", "Pairs the attack cannot target answer their no-attack cell only (the worst case over attacks "
                  "then covers the attacks that apply):", ""]
        lines += [f"- {reason} ({count} point{'s' if count != 1 else ''})" for reason, count in unattacked.items()]
    return lines


def _machine_text(machine: Optional[dict]) -> str:
    if not machine:
        return ""
    device = f"GPU {machine['gpu']}" if machine.get("gpu") else "no GPU"
    return (f" Machine: {machine['cpu']}, {machine['cores']} cores, {device}, torch {machine['torch']}; "
            f"finished {machine['finished_utc']} UTC.")


def report_text(rows: list[dict], record: dict, tolerance: float, images: list[str], image_dir: str = "",
                metric: str = "final_acc") -> str:
    """report.md (and the docs page, with images under `image_dir`)."""
    c = record["counts"]
    saved = record.get("naive_grid_train_s")
    lines = [f"# Sweep: {record['name']}", "", "```", record["command"], "```", "",
             f"{c['cells']} scenario cells answered by {c['runs']} distinct runs: the planner trains "
             f"{c['cells'] - c['runs']} fewer runs than the naive grid ({c['cells'] / max(c['runs'], 1):.2f}× fewer)."
             + (f" Training the runs took {record['train_s']:.0f} s in total (the sum of their wall times); the "
                f"naive grid would have spent about {saved:.0f} s (each cell's run trained again)." if saved else ""),
             f"This invocation: {c['trained']} runs trained, {c['read_back']} read back from the store, "
             f"{record['wall_s']:.0f} s wall time, backend {record['backend']}, {record['jobs']} "
             f"job{'s' if record['jobs'] != 1 else ''} × {record['threads']} thread{'s' if record['threads'] != 1 else ''}"
             "." + _machine_text(record.get("machine")), "", "## Grid", ""] + _grid_lines(record) + [""]
    found = findings(rows, tolerance, metric)
    if found:
        lines += ["## What the figures show", ""] + [f"- {line}" for line in found] + [""]
    if "heatmap.png" in images:
        lines += ["## Worst case over attacks: heatmap", "",
                  f"![heatmap]({image_dir}heatmap.png)", "",
                  "Per scheme and defense: x = f, y = heterogeneity, colour and number = the worst-case final "
                  "accuracy (%) over the grid's attacks (mean over seeds).", ""]
    if "breakdown.png" in images:
        lines += ["## Breakdown curves", "", f"![breakdown]({image_dir}breakdown.png)", "",
                  "Worst-case accuracy against f/n per scheme, one line per defense (band: ± std over seeds), "
                  "the no-attack reference dashed.", "", breakdown_table(rows, tolerance, metric)]
    if any(r["scenario"] != "no-attack" for r in rows):
        lines += ["## Worst-case table", "", worst_case_tables(rows, metric)]
    lines += ["## Files", "", "results.csv (one row per scenario cell), table.md, heatmap.png, breakdown.png, "
              "sweep.json (the grid and the counts); the runs in the store (`run_dir` in results.csv)."]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_reports(out: Path, rows: list[dict], record: dict, tolerance: float, images: list[str]) -> None:
    """table.md and report.md in `out`."""
    table = worst_case_tables(rows) if any(r["scenario"] != "no-attack" for r in rows) else \
        "This grid has no attack scenario: see results.csv.\n"
    atomic_write_text(Path(out) / "table.md", f"# Worst case over attacks: {record['name']}\n\n{table}")
    atomic_write_text(Path(out) / "report.md", report_text(rows, record, tolerance, images))


def write_docs_page(page: Path, out: Path, rows: list[dict], record: dict, tolerance: float,
                    images: Optional[list[str]] = None) -> None:
    """The report as a docs page: its images copied into <page stem>/ beside it, linked relatively."""
    page = Path(page)
    images = [name for name in (images or ["heatmap.png", "breakdown.png"]) if (Path(out) / name).is_file()]
    folder = page.parent / page.stem.lower()
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        shutil.copyfile(Path(out) / name, folder / name)
    atomic_write_text(page, report_text(rows, record, tolerance, images, image_dir=f"{folder.name}/"))


__all__ = ["worst_case_tables", "breakdown_table", "findings", "report_text", "write_reports", "write_docs_page"]
