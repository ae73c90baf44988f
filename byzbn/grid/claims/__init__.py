"""The seed papers' claims, checked on their sweep presets: `python -m byzbn.claims PRESET OUT`.

One module per preset computes its Section (byzbn.grid.claims.common) from the sweep's results.csv and
sweep.json; byzbn.grid.claims.page renders it as markdown and writes it between the preset's markers
in a docs page (docs/RESULTS.md), so the tables there are regenerated, never typed.
"""
from __future__ import annotations

from byzbn.grid.claims import fedtan, fig3, fig4, fixbn, hbn, under_attack
from byzbn.grid.claims.common import Claim, Section
from byzbn.grid.report import coverage_text, noise_floor, seeds_text
from byzbn.grid.worst import chance_of

SECTIONS = {"fixbn": fixbn.section, "fedtan": fedtan.section, "hbn": hbn.section,
            "schemes-under-attack": under_attack.section, "fig3": fig3.section, "fig4": fig4.section}
# Presets whose attacked cells are compared with their own no-attack runs, not ranked by a worst case over
# attacks: their statistics line does not describe one (and a diverged run is left out, not counted at chance).
NO_WORST_CASE = frozenset({"fig4"})


def section_of(preset: str, rows: list[dict], record: dict) -> Section:
    """The claim section of `preset` computed from its sweep; ValueError for a preset without one."""
    if preset not in SECTIONS:
        raise ValueError(f"no claim section for preset {preset!r}: valid {sorted(SECTIONS)}")
    section = SECTIONS[preset](rows, record)
    section.statistics = f"Numbers: {seeds_text(rows)}, in % of test accuracy; a difference is the mean " \
                         f"of the per-seed differences (paired) with its own interval. {noise_floor(rows, record)}"
    if preset not in NO_WORST_CASE and any(r["scenario"] != "no-attack" for r in rows):
        section.statistics += " " + coverage_text(rows, chance_of(record))
    return section


__all__ = ["SECTIONS", "NO_WORST_CASE", "Claim", "Section", "section_of"]
