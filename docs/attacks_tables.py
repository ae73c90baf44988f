"""Tables of docs/ATTACKS.md from the two sweeps' results.csv (final / best test accuracy, %)."""
import csv, sys
rows = []
for path in sys.argv[1:]:
    with open(path) as fh:
        rows += list(csv.DictReader(fh))
ATTACKS = ["sign-flip", "foe", "alie", "optimal-alie", "mimic", "bn-adaptive"]
COLS = [("no-attack", None, None), ("attack", None, "mean (no defense)"), ("attack+defense", ("nnm", "median"), "NNM∘median"),
        ("attack+defense", ("nnm", "trimmed-mean"), "NNM∘trimmed-mean"), ("attack+defense", ("none", "krum"), "krum"),
        ("attack+defense", ("none", "geomed"), "geomed"), ("attack+defense", ("none", "centered-clipping"), "centered-clipping")]
def cell(scheme, attack, scenario, pd):
    for r in rows:
        if r["scheme"] != scheme or r["attack"] != attack or r["scenario"] != scenario:
            continue
        if pd is not None and (r["pre"], r["defense"]) != pd:
            continue
        if not r["final_acc"]:
            return "–"
        mark = "" if r["status"] == "ok" else " (diverged)"
        return f"{100*float(r['final_acc']):.1f} / {100*float(r['best_acc']):.1f}{mark}"
    return "–"
for scheme in ["fbn", "naive"]:
    print(f"\n**{scheme}** (final / best test accuracy, %)\n")
    print("| attack | " + " | ".join(c[2] or c[0] for c in COLS) + " |")
    print("|---|" + "---:|" * len(COLS))
    for a in ATTACKS:
        print(f"| {a} | " + " | ".join(cell(scheme, a, sc, pd) for sc, pd, _ in COLS) + " |")
walls = {}
for r in rows:
    if r["wall_s"]:
        walls[r["run"]] = float(r["wall_s"])
print(f"\n{len(walls)} distinct runs, {sum(walls.values())/60:.1f} min of training in total")
