"""The tables of docs/ATTACKS.md, computed from a sweep's results.csv and sweep.json (nothing typed).

    python docs/attacks/tables.py docs/attacks/catalogue --page docs/ATTACKS.md --block catalogue
    python docs/attacks/tables.py docs/attacks/peers --page docs/ATTACKS.md --block peers --versus bn-adaptive

Per attacked channel, f and scheme: one row per attack, one column per server (no attack, no defense,
each pre∘rule), each cell the final test accuracy in %, mean over seeds ± the 95 % Student-t interval
over seeds, "k/K diverged" beside the mean of the finished runs when some seed diverged. A sweep with
centered clipping adds the fraction of rows it clipped. With --versus ATTACK, a comparison table: per
scheme, channel, f and server, the strongest of the other attacks (lowest mean, a diverged run at chance)
against ATTACK, as the mean of the per-seed paired differences (other − ATTACK) with its interval:
"stronger" when the interval lies wholly below 0, "weaker" wholly above, "tied" otherwise.
Without --page the markdown is printed; with it, the block between the BLOCK markers of PAGE is replaced.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from byzbn.attacks import ATTACKS
from byzbn.grid.claims.page import replace_marked
from byzbn.grid.intervals import paired_difference
from byzbn.grid.table import markdown_lines, read_results
from byzbn.grid.worst import NO_ATTACK, NO_DEFENSE, chance_of, defense_of, diverged, outcome, value_of


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


NO_ATTACK_RUN = "(no attack)"
POISONING = frozenset(name for name in ATTACKS if ATTACKS.lookup(name).poisons_data)


def cells(rows: list[dict]) -> dict:
    """{(scheme, target, f, attack, server): {seed: (accuracy, diverged)}}; a no-attack cell's attack is
    NO_ATTACK_RUN (NO_ATTACK_RUN + "poisoning" beside a data-poisoning attack)."""
    out: dict = {}
    for r in rows:
        if r.get("final_acc") is None and not diverged(r):
            continue
        # A no-attack cell is keyed by the target of the attack cells it stands beside: a data-poisoning
        # attack's no-attack run (its Byzantine clients hold data) differs from the others'.
        attack = "" if r["scenario"] == "no-attack" else r["attack"]
        if attack == "" and r.get("run"):
            attack = NO_ATTACK_RUN + ("poisoning" if r["attack"] in POISONING else "")
        key = (r["scheme"], r["target"], r["byzantine"], attack, defense_of(r))
        out.setdefault(key, {})[r["seed"]] = outcome(r, "final_acc")
    return out


def _value(by_seed: dict, chance: float, as_chance: bool = False):
    return None if not by_seed else value_of(by_seed, 0, chance, as_chance=as_chance)


def _cell_text(value) -> str:
    """The mean of the finished runs ± interval, 'k/K diverged' beside it; every seed diverged: said so."""
    if value is None:
        return "–"
    if value.diverged == value.seeds:
        return f"diverged ({value.diverged}/{value.seeds})"
    return value.text()


def pivot_tables(rows: list[dict], chance: float) -> list[str]:
    table = cells(rows)
    attacked = [r for r in rows if r["scenario"] != "no-attack"]
    servers = [NO_DEFENSE] + _ordered(defense_of(r) for r in attacked if r["scenario"] == "attack+defense")
    lines = []
    for target in _ordered(r["target"] for r in attacked):
        for f in sorted({r["byzantine"] for r in attacked if r["target"] == target and r["byzantine"] > 0}):
            for scheme in _ordered(r["scheme"] for r in attacked):
                attacks = _ordered(r["attack"] for r in attacked
                                   if (r["target"], r["byzantine"], r["scheme"]) == (target, f, scheme))
                shown = [s for s in servers if any((scheme, target, f, a, s) in table for a in attacks)]
                if not attacks:
                    continue
                poisoning = all(a in POISONING for a in attacks)
                clean = _value(table.get((scheme, target, f, NO_ATTACK_RUN + ("poisoning" if poisoning else ""),
                                          NO_ATTACK), {}), chance)
                if not shown:
                    continue
                channel = "the statistics" if target == "stats" else ("both channels" if target == "both" else target)
                lines += ["", f"**{scheme}**, attack on {channel}, f = {f} (no attack: "
                          f"{clean.text() if clean else '–'})", ""]
                body = []
                for a in attacks:
                    line = [a]
                    for s in shown:
                        line.append(_cell_text(_value(table.get((scheme, target, f, a, s), {}), chance)))
                    body.append(line)
                lines += markdown_lines(["attack", *shown], body)
    return lines


def clipped_table(rows: list[dict]) -> list[str]:
    """The mean fraction of rows centered clipping clipped per call, per scheme and attack."""
    clipped = [r for r in rows if r.get("clipped_fraction") is not None]
    if not clipped:
        return []
    schemes = _ordered(r["scheme"] for r in clipped)
    body = []
    for a in _ordered(r["attack"] for r in clipped):
        line = [a]
        for s in schemes:
            values = [r["clipped_fraction"] for r in clipped if (r["attack"], r["scheme"]) == (a, s)]
            line.append("–" if not values else f"{100 * statistics.fmean(values):.0f} %")
        body.append(line)
    return ["", "**Centered clipping: rows clipped** (the fraction of the rows it clipped per call, averaged over "
            "the run's calls — one per step for each channel it defends, two on the statistics: means, then "
            "variances — and over the seeds; rows holding NaN/Inf are not counted)", "",
            *markdown_lines(["attack", *schemes], body)]


def versus_table(rows: list[dict], chance: float, reference: str) -> list[str]:
    table = cells(rows)
    head = ["scheme", "channel", "f", "server", reference, "strongest other", "other − " + reference, "verdict"]
    body, tally = [], {"stronger": 0, "weaker": 0, "tied": 0}
    groups = _ordered(k[:3] + k[4:] for k in table if k[3] == reference)
    for scheme, target, f, server in groups:
        ref = _value(table[(scheme, target, f, reference, server)], chance, as_chance=True)
        others = {k[3]: _value(v, chance, as_chance=True) for k, v in table.items()
                  if k[3] != reference and not k[3].startswith(NO_ATTACK_RUN)
                  and (k[0], k[1], k[2], k[4]) == (scheme, target, f, server)}
        if not others:
            continue
        name, low = min(others.items(), key=lambda item: (item[1].mean, item[0]))
        diff = paired_difference(dict(low.by_seed), dict(ref.by_seed))
        word = "tied" if diff is None or diff.half is None or diff.low <= 0 <= diff.high else (
            "stronger" if diff.high < 0 else "weaker")
        tally[word] += 1
        body.append([scheme, target, str(f), server, ref.text(), f"{name}: {low.text()}",
                     "–" if diff is None else diff.text(signed=True), word])
    summary = ", ".join(f"{k} in {v}" for k, v in tally.items())
    return ["", f"**The strongest other attack against {reference}** (a diverged run counted at chance; "
            f"{summary} of {len(body)} comparisons)", "", *markdown_lines(head, body)]


def block(out: Path, name: str, versus: str | None) -> str:
    rows = read_results(out / "results.csv")
    record = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    chance = chance_of(record)
    seeds = len({r["seed"] for r in rows})
    walls = {r["run"]: r["wall_s"] for r in rows if r.get("wall_s") is not None}
    lines = [f"<!-- {name}: generated by docs/attacks/tables.py; do not edit -->", "",
             f"Final test accuracy (%), mean over {seeds} seeds ± the 95 % Student-t interval over seeds; "
             f"{len(walls)} distinct runs, {sum(walls.values()) / 60:.0f} min of training summed.",
             *pivot_tables(rows, chance), *clipped_table(rows)]
    if versus:
        lines += versus_table(rows, chance, versus)
    return "\n".join(lines + ["", f"<!-- end {name} -->"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the sweep's --out (results.csv, sweep.json)")
    parser.add_argument("--page", type=Path, help="the page whose BLOCK is replaced")
    parser.add_argument("--block", default="attack-tables", help="the marker name of the block")
    parser.add_argument("--versus", help="compare the strongest other attack against this one")
    args = parser.parse_args(argv)
    text = block(args.out, args.block, args.versus)
    if args.page is None:
        print(text)
        return 0
    if not replace_marked(args.page, f"<!-- {args.block}: generated", f"<!-- end {args.block} -->", text):
        print(f"{args.page}: no {args.block} markers", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
