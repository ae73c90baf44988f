"""--dry-run by counting: every point validated and hashed as the planner does, nothing kept but the keys.

byzbn.grid.planner.plan_sweep materializes the plan a sweep trains from: a Cell per results.csv row and
a Run (with its options and identity) per distinct run. A dry run needs only the counts and the states,
so `count_sweep` streams the points (SweepSpec.iter_assignments, never a list), validates each, and
keeps per distinct run its key and a few numbers: memory O(distinct runs) with small keys, nothing per
cell. The
keys are the planner's (identity_of + run_key), so the counts are the ones the sweep will train.
Only the first LISTED runs are described line by line; the others are counted.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from byzbn.grid.planner import identity_of, run_namespace
from byzbn.grid.spec import SweepSpec, describe
from byzbn.grid.store import KEY_CHARS, Store, stored_config
from byzbn.runs.config import validate_run
from byzbn.runs.errors import ArgumentError, one_line
from byzbn.runs.identity import ignored_keys

LISTED = 200  # distinct runs described one per line; the rest only counted


@dataclass
class SweepCount:
    cells: int = 0
    runs: dict = field(default_factory=dict)  # key -> cells it answers (insertion order: first need)
    listed: list = field(default_factory=list)  # (key, scheme, scenario, {read axis: value}) of the first LISTED
    unattacked: dict = field(default_factory=dict)


def _points(spec: SweepSpec):
    for assignment in spec.iter_assignments():  # lazily, a ladder's rungs included
        yield assignment, {**spec.fixed, **assignment}


# Options the validator only range-checks and copies into the configuration: no other check reads them,
# and a run's identity holds them verbatim. Points that differ only there share one validation.
VALUE_ONLY = ("lr", "momentum", "eval_every", "checkpoint_every")
BASES_KEPT = 256  # validated bases remembered (an LRU): grids vary the value-only axes fastest or slowest


@dataclass
class _Base:
    """A validated point, as far as the points that differ from it in VALUE_ONLY options need it."""

    runs: list
    unattacked: list
    identities: dict  # (scheme, scenario) -> identity
    templates: dict = field(default_factory=dict)  # (scheme, scenario, own keys) -> _KeyTemplate


class _KeyTemplate:
    """run_key of an identity whose `own` values vary, without encoding the rest of it again for every cell:
    the identity's canonical JSON (byzbn.grid.store.run_key's text) split where those values go."""

    def __init__(self, identity: dict, own: tuple):
        marks = {k: f"\x00{k}\x00" for k in own}  # a string no identity holds
        text = json.dumps(stored_config({**identity, **marks}), sort_keys=True, separators=(",", ":"))
        cuts = sorted((text.index(json.dumps(mark)), k, len(json.dumps(mark))) for k, mark in marks.items())
        self.keys, self.parts, start = [k for _, k, _ in cuts], [], 0
        for at, _, width in cuts:
            self.parts.append(text[start:at])
            start = at + width
        self.parts.append(text[start:])

    def key(self, values: dict) -> str:
        pieces = [self.parts[0]]
        for k, part in zip(self.keys, self.parts[1:]):
            pieces += [json.dumps(values[k], sort_keys=True, separators=(",", ":")), part]
        return hashlib.sha256("".join(pieces).encode("utf-8")).hexdigest()[:KEY_CHARS]


def _validated(options: dict, assignment: dict, spec: SweepSpec, threads: int) -> tuple[_Base, set]:
    """Validate one point fully; (its base, the VALUE_ONLY keys its identities hold verbatim)."""
    try:
        checked = validate_run(run_namespace(options), compared=list(spec.axes["schemes"]))
    except ArgumentError as error:
        raise ArgumentError(f"{one_line(error)} (at {describe(assignment)})") from error
    identities = {(scheme, scenario): identity_of(checked.config, checked.client_indices, scheme, scenario, threads)
                  for scheme, scenario in checked.runs}
    verbatim = {k for k in VALUE_ONLY if k in options
                and all(identity.get(k, options[k]) == options[k] for identity in identities.values())}
    return _Base(list(checked.runs), list(checked.unattacked.values()), identities), verbatim


def count_sweep(spec: SweepSpec, threads: int, store: Store | None = None) -> SweepCount:
    """Validate every point (ArgumentError naming the point) and count cells and distinct runs; with `store`,
    check that each run directory it holds is the sweep's own (as byzbn.grid.planner.check_store).

    A point whose VALUE_ONLY options differ from a validated point's (its *base*), each value having been
    validated in some point, is not validated again: its identities are the base's with its own values.
    """
    count = SweepCount()
    checking = store is not None and store.root.exists()
    bases: OrderedDict = OrderedDict()
    checked_values: set = set()  # (option, repr(value)) validated in some point
    derivable = set(VALUE_ONLY)  # value-only options whose values every identity so far held verbatim
    for assignment, options in _points(spec):
        values = {k: options[k] for k in derivable if k in options}
        # the fixed options are the same at every point: the assignment alone tells the bases apart
        base_key = repr(sorted((k, repr(v)) for k, v in assignment.items() if k not in values))
        base = bases.get(base_key)
        if base is None or any((k, repr(v)) not in checked_values for k, v in values.items()):
            base, verbatim = _validated(options, assignment, spec, threads)
            derivable &= verbatim | (set(VALUE_ONLY) - set(options))
            checked_values.update((k, repr(v)) for k, v in values.items())
            base_key = repr(sorted((k, repr(v)) for k, v in assignment.items() if k not in derivable))
            bases[base_key] = base
            if len(bases) > BASES_KEPT:
                bases.popitem(last=False)
        bases.move_to_end(base_key)
        for reason in base.unattacked:
            count.unattacked[reason] = count.unattacked.get(reason, 0) + 1
        for scheme, scenario in base.runs:
            identity = base.identities[(scheme, scenario)]
            own = tuple(sorted(k for k in derivable if k in identity))
            template = base.templates.get((scheme, scenario, own))
            if template is None:
                template = base.templates[(scheme, scenario, own)] = _KeyTemplate(identity, own)
            key = template.key(options)
            count.cells += 1
            if key not in count.runs:
                if checking:
                    store.check(key, {**identity, **{k: options[k] for k in own}})
                if len(count.listed) < LISTED:
                    unread = ignored_keys(identity["scenario"], options["byzantine"])
                    varying = {k: options[k] for k in spec.axes
                               if k != "schemes" and k not in unread and f"{k}s" not in unread}
                    count.listed.append((key, scheme, identity["scenario"], varying))
            count.runs[key] = count.runs.get(key, 0) + 1
    return count


def dry_run_count(spec: SweepSpec, threads: int, store_root: Path) -> str:
    """--dry-run's text: the counts, the store's states, then the first LISTED distinct runs."""
    store = Store(store_root)
    count = count_sweep(spec, threads, store=store)
    exists = store.root.is_dir()
    states = {"done": 0, "started": 0, "new": 0}
    listed_states = {}
    for key in count.runs:
        state = store.state(key) if exists else "new"
        states[state] += 1
        if len(listed_states) < LISTED:
            listed_states[key] = state
    runs = len(count.runs)
    lines = [f"{count.cells} scenario cells, {runs} distinct runs ({count.cells - runs} cells answered by a shared "
             f"run); {states['done']} done, {states['started']} started (resume from a checkpoint), "
             f"{states['new']} to train", f"store: {store.root}"]
    lines += [f"no attack cells at {n} point{'s' if n != 1 else ''}: {reason}"
              for reason, n in count.unattacked.items()]
    for key, scheme, scenario, varying in count.listed:
        cells = count.runs[key]
        lines.append(f"  {key}  {listed_states.get(key, store.state(key) if exists else 'new'):<7}  {scheme:<11}  "
                     f"{scenario:<14}  {cells:>3} cell{'s' if cells != 1 else ' '}  {describe(varying)}")
    if runs > len(count.listed):
        lines.append(f"  ... and {runs - len(count.listed)} more distinct runs")
    return "\n".join(lines) + "\n"


__all__ = ["LISTED", "SweepCount", "count_sweep", "dry_run_count"]
