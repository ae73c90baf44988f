"""table.md, report.md and the docs page of a sweep: the worst case over attacks in words and numbers.

Everything is computed from results.csv's rows (byzbn.grid.worst) and the sweep's record (sweep.json:
the command, the grid, the counts and times), so a page regenerated from a stored sweep is the same.
"""
from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Optional

from byzbn.grid.intervals import INTERVAL_TEXT, noise_floor_text, paired_difference
from byzbn.grid.table import DIAGNOSTIC_COLUMNS, markdown_lines
from byzbn.grid.worst import (METRICS, NO_ATTACK, attacks_covered, axes_of, breakdown_points, chance_of, diverged,
                              panel_text, reference, test_samples_of, worst_case)
from byzbn.runs.results import atomic_write_text

# A combination "at chance" (worst case within this much accuracy of 1/classes) is never called the most robust.
AT_CHANCE = 0.01


def _pct(value) -> str:
    return "–" if value is None else value.text()


def _clients(rows: list[dict], f: int) -> int:
    return next(r["clients"] for r in rows if r["byzantine"] == f)


def seeds_text(rows: list[dict]) -> str:
    """'mean over 3 seeds ± the 95 % Student-t interval over seeds' (said once per page), or 'one seed (no
    interval)'."""
    seeds = len({r["seed"] for r in rows})
    return f"mean over {seeds} seeds ± the {INTERVAL_TEXT}" if seeds > 1 else "one seed (no interval)"


# results.csv columns that are a cell's outcome, not what it configures.
_OUTCOME = frozenset({"seed", "run", "run_dir", "wall_s", "steps_done", "final_acc", "best_acc", "status", "comm_rounds",
                      "stats_clamped", "clipped_fraction", *DIAGNOSTIC_COLUMNS})


def noise_floor(rows: list[dict], record: Optional[dict], metric: str = "final_acc") -> str:
    """The page's noise floor: the seed-to-seed std pooled over the distinct cells (cells answered by the
    same runs counted once) and the binomial standard error of the test set at the mean accuracy."""
    cells: dict = {}
    for r in rows:
        if r.get(metric) is not None and not diverged(r):
            key = tuple((k, v) for k, v in r.items() if k not in _OUTCOME)
            cells.setdefault(key, {})[r["seed"]] = (r.get("run", id(r)), r[metric])
    distinct = {tuple(sorted(by_seed.items())): [acc for _, acc in by_seed.values()] for by_seed in cells.values()}
    return noise_floor_text(list(distinct.values()), test_samples_of(record))


def coverage_text(rows: list[dict], chance: float) -> str:
    """Which attacks the worst case is over, and how a diverged run counts."""
    attacks = attacks_covered(rows)
    return (f"The worst case is over {len(attacks)} attack{'s' if len(attacks) != 1 else ''}: "
            f"{', '.join(attacks) if attacks else 'none'}; a diverged run counts as chance accuracy "
            f"({100 * chance:.0f} %) there and is shown as \"k/K diverged\".")


def worst_case_tables(rows: list[dict], metric: str = "final_acc", chance: float = 0.1) -> str:
    """Markdown: per heterogeneity (× panel) a table f × (scheme: no attack, then each defense), the worst
    case over attacks in each cell (mean ± 95 % interval over seeds; its attack in brackets when there
    are several) and the best defended or undefended combination of each row in bold."""
    worst, ref, axes = worst_case(rows, metric, chance), reference(rows, metric, chance), axes_of(rows)
    several = len({(r["attack"], r.get("attack_param")) for r in rows if r["scenario"] != "no-attack"}) > 1
    lines = [f"Worst case over attacks of the {METRICS.get(metric, metric)} (%), {seeds_text(rows)}; "
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
                unique = best is not None and attacked.count(best) == 1 and best > chance + AT_CHANCE
                row = [f"{f} ({f / _clients(rows, f):.2f})"]
                for v, (_, d) in zip(values, columns):
                    text = _pct(v) + (f" ({v.attack})" if v is not None and several and v.attack and f > 0 else "")
                    bold = unique and v is not None and d != NO_ATTACK and v.mean == best
                    row.append(f"**{text}**" if bold else text)
                body.append(row)
            if not body:
                continue
            lines += [f"### heterogeneity {het}" + (f", {panel_text(panel)}" if panel else ""), ""]
            lines += markdown_lines(["f (f/n)"] + [f"{s}: {d}" for s, d in columns], body) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def breakdown_table(rows: list[dict], tolerance: float, metric: str = "final_acc", chance: float = 0.1) -> str:
    """Markdown: the breakdown point per scheme × defense (censored at the largest f tested)."""
    points = breakdown_points(worst_case(rows, metric, chance), reference(rows, metric, chance), tolerance)
    axes = axes_of(rows)
    head = ["scheme", "defense"] + [f"{het}" + (f", {panel_text(p)}" if p else "")
                                    for het in axes["heterogeneities"] for p in axes["panels"]]
    body = []
    for scheme in axes["schemes"]:
        for defense in axes["defenses"]:
            keys = [(scheme, defense, p, het) for het in axes["heterogeneities"] for p in axes["panels"]]
            if not any(k in points for k in keys):
                continue
            body.append([scheme, defense] + ["–" if k not in points else points[k].text() for k in keys])
    intro = (f"Breakdown point: the largest f/n up to which the paired drop from no attack to the worst case "
             f"over attacks (per seed) has its 95 % interval's upper end within {100 * tolerance:g} points at "
             f"every f of the grid; \"≥ x (largest f tested)\" when the grid never crosses the tolerance. "
             f"Columns: heterogeneity.")
    return "\n".join([intro, ""] + markdown_lines(head, body)) + "\n"


def _by_seed(worst: dict, scheme: str, defense: str, panel: tuple, het: str) -> dict:
    """{seed: the mean over f > 0 of the worst case at that seed} of one scheme × defense: what pairs compare."""
    curves = [dict(v.by_seed) for (s, d, p, h, f), v in worst.items() if (s, d, p, h) == (scheme, defense, panel, het)
              and f > 0]
    seeds = set.intersection(*(set(c) for c in curves)) if curves else set()
    return {seed: statistics.fmean(c[seed] for c in curves) for seed in sorted(seeds)}


def findings(rows: list[dict], tolerance: float, metric: str = "final_acc", chance: float = 0.1) -> list[str]:
    """What the figures show, per heterogeneity (× panel): the most robust scheme × defense (highest mean of
    its worst case over the grid's f > 0; none when the best is tied or at chance) and the undefended worst
    case at the largest f."""
    worst, axes = worst_case(rows, metric, chance), axes_of(rows)
    points = breakdown_points(worst, reference(rows, metric, chance), tolerance)
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
            ranked = sorted(((statistics.fmean(m), pair) for pair, m in scores.items()), reverse=True)
            score, (scheme, defense) = ranked[0]
            if score <= chance + AT_CHANCE:
                out.append(f"At {where}, no combination keeps its worst case above chance ({100 * chance:.0f} %) "
                           f"on average over f > 0.")
            elif len(ranked) > 1 and ranked[1][0] == score:
                tied = [f"{s} with {d}" for m, (s, d) in ranked if m == score]
                out.append(f"At {where}, {', '.join(tied)} tie at {100 * score:.1f}% worst-case accuracy on average "
                           f"over f > 0.")
            else:
                point = points.get((scheme, defense, panel, het))
                line = (f"At {where}, the highest worst case is {scheme} with {defense}: "
                        f"{100 * score:.1f}% on average over f > 0, breakdown point "
                        f"{'–' if point is None else point.text()}")
                if len(ranked) > 1:
                    _, (s2, d2) = ranked[1]
                    lead = paired_difference(_by_seed(worst, scheme, defense, panel, het),
                                             _by_seed(worst, s2, d2, panel, het))
                    line += (f"; {'–' if lead is None else lead.text(signed=True)} points above the next, {s2} with "
                             f"{d2} (paired over seeds)")
                out.append(line + ".")
            top = max(axes["fs"])
            for s in axes["schemes"]:
                value = worst.get((s, "no defense", panel, het, top))
                if value is not None:
                    worst_attack = value.attack or "several attacks tie"
                    out.append(f"At {where}, {s} without defense falls to {value.text()}% at f = {top} "
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
    chance = chance_of(record)
    lines += ["## Statistics", "", f"Numbers: {seeds_text(rows)}, in % of test accuracy. "
              + noise_floor(rows, record, metric)]
    if any(r["scenario"] != "no-attack" for r in rows):
        lines += ["", coverage_text(rows, chance)]
    lines += [""]
    found = findings(rows, tolerance, metric, chance)
    if found:
        lines += ["## What the figures show", ""] + [f"- {line}" for line in found] + [""]
    if "heatmap.png" in images:
        lines += ["## Worst case over attacks: heatmap", "",
                  f"![heatmap]({image_dir}heatmap.png)", "",
                  "Per scheme and defense: x = f, y = heterogeneity, colour and number = the worst-case final "
                  "accuracy (%) over the grid's attacks (mean over seeds; second line: ± the 95 % interval, "
                  "hatched when wider than ±5 points).", ""]
    if "breakdown.png" in images:
        lines += ["## Breakdown curves", "", f"![breakdown]({image_dir}breakdown.png)", "",
                  "Worst-case accuracy against f/n per scheme, one line per defense (band: the 95 % interval "
                  "over seeds), the no-attack reference dashed.", "", breakdown_table(rows, tolerance, metric, chance)]
    if any(r["scenario"] != "no-attack" for r in rows):
        lines += ["## Worst-case table", "", worst_case_tables(rows, metric, chance)]
    lines += ["## Files", "", "results.csv (one row per scenario cell), table.md, heatmap.png, breakdown.png, "
              "sweep.json (the grid and the counts); the runs in the store (`run_dir` in results.csv)."]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_reports(out: Path, rows: list[dict], record: dict, tolerance: float, images: list[str]) -> None:
    """table.md and report.md in `out`."""
    table = worst_case_tables(rows, chance=chance_of(record)) if any(r["scenario"] != "no-attack" for r in rows) else \
        "This grid has no attack scenario: see results.csv.\n"
    if any(r["scenario"] != "no-attack" for r in rows):
        table += f"\n{coverage_text(rows, chance_of(record))} {noise_floor(rows, record)}\n"
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
        if not (folder / name).exists() or not (folder / name).samefile(Path(out) / name):  # --out may be that folder
            shutil.copyfile(Path(out) / name, folder / name)
    atomic_write_text(page, report_text(rows, record, tolerance, images, image_dir=f"{folder.name}/"))


__all__ = ["AT_CHANCE", "seeds_text", "noise_floor", "coverage_text", "worst_case_tables", "breakdown_table", "findings",
           "report_text", "write_reports", "write_docs_page"]
