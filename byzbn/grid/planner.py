"""The planner: every point of a grid validated, its scenario cells, and the distinct runs they need.

A *scenario cell* is one point × scheme × scenario: one row of results.csv. A *distinct run* is what
must be trained: cells whose runs compute with the same configuration (byzbn.runs.identity: no-attack
reads neither attack nor defense, the undefended attack does not read the defense) share one run,
trained once and stored under one key (byzbn.grid.store); without Byzantine clients (f = 0) the
undefended attack cells of every attack and target are the no-attack run, and the defended ones one run
per defense and target. Besides the configuration, a run's identity holds a digest of its data
partition (what the data-dependent choices of the validator produced) and, on CPU, the number of
intra-op threads it trains with: torch's CPU reductions split by thread, so the same seed on another
thread count gives (slightly) other numbers.
"""
from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field

import torch

from byzbn.grid.spec import SweepSpec, describe, value_text
from byzbn.grid.store import Store, run_key
from byzbn.runs.config import validate_run
from byzbn.runs.errors import ArgumentError, one_line
from byzbn.runs.identity import ignored_keys, run_identity
from byzbn.runs.run_config import RunConfig

# results.csv's configuration columns besides the axes: what the tables and plots group by.
ID_COLUMNS = ("clients", "byzantine", "heterogeneity", "attack", "target", "pre", "defense", "seed")


@dataclass(frozen=True)
class Cell:
    """One row of results.csv: a point's scheme × scenario, answered by the distinct run `key`."""

    assignment: dict
    scheme: str
    scenario: str
    key: str
    columns: dict  # configuration column -> text


@dataclass
class Run:
    """One distinct run: what it computes with, and the options of the first point that needs it."""

    key: str
    identity: dict
    options: dict
    scheme: str
    scenario: str
    cells: int = 0


@dataclass
class SweepPlan:
    spec: SweepSpec
    threads: int
    cells: list[Cell] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)  # in the order the cells first need them
    devices: set = field(default_factory=set)
    unattacked: dict = field(default_factory=dict)  # why a scheme × attack has no attack cells -> its points
    data: dict = field(default_factory=dict)  # dataset -> {test_samples, classes}: the noise floor, chance accuracy

    def states(self, store: Store) -> dict[str, str]:
        """key -> 'done' | 'started' | 'new'."""
        return {key: store.state(key) for key in self.runs}


def partition_digest(client_indices: torch.Tensor) -> str:
    """A short hash of the clients' sample indices (shape included)."""
    data = client_indices.detach().cpu().contiguous().to(torch.int64)
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def run_namespace(options: dict, out=None, resume: bool = False) -> argparse.Namespace:
    """The namespace byzbn.runs.config validates: a point's options plus out/resume/quiet."""
    return argparse.Namespace(**options, out=None if out is None else str(out), resume=resume, quiet=True)


def identity_of(config: RunConfig, client_indices: torch.Tensor, scheme: str, scenario: str, threads: int) -> dict:
    """What the run computes with: the scenario's configuration, the partition and (CPU) the thread count."""
    identity = run_identity(config, scheme, scenario)
    identity["partition"] = partition_digest(client_indices)
    if config.device == "cpu":
        identity["threads"] = threads
    return identity


def _columns(assignment: dict, config: dict) -> dict:
    keys = [k for k in assignment if k != "schemes"] + [k for k in ID_COLUMNS if k not in assignment]
    return {k: value_text(config[k] if k in config else assignment[k]) for k in keys}


def plan_sweep(spec: SweepSpec, threads: int) -> SweepPlan:
    """Validate every point (ArgumentError naming the point and the flag) and collect cells and runs.

    Loads the data (byzbn.data.load_dataset caches it) but writes nothing.
    """
    plan = SweepPlan(spec, threads)
    for assignment, options in spec.points():
        try:
            checked = validate_run(run_namespace(options), compared=list(spec.axes["schemes"]))
        except ArgumentError as error:
            raise ArgumentError(f"{one_line(error)} (at {describe(assignment)})") from error
        plan.devices.add(checked.config.device)
        plan.data.setdefault(value_text(checked.config.dataset), {
            "test_samples": int(checked.dataset.x_test.shape[0]), "classes": int(checked.dataset.num_classes)})
        for reason in checked.unattacked.values():
            plan.unattacked[reason] = plan.unattacked.get(reason, 0) + 1
        for scheme, scenario in checked.runs:
            identity = identity_of(checked.config, checked.client_indices, scheme, scenario, threads)
            key = run_key(identity)
            # the scenario it computes: at f = 0 the undefended attack is the no-attack run (byzbn.runs.identity)
            run = plan.runs.setdefault(key, Run(key, identity, options, scheme, identity["scenario"]))
            run.cells += 1
            plan.cells.append(Cell(assignment, scheme, scenario, key, _columns(assignment, checked.config.to_json())))
        del checked  # its dataset stays cached; the partition and built objects go
    return plan


def reads(run: Run, option: str) -> bool:
    """Whether `run` reads run option `option` (its config key; attack_param's is attack_params)."""
    ignored = ignored_keys(run.scenario, run.options["byzantine"])
    return option not in ignored and f"{option}s" not in ignored


def check_store(plan: SweepPlan, store: Store) -> None:
    """Every run directory the plan will use is either absent or the sweep's own; reads only."""
    for run in plan.runs.values():
        store.check(run.key, run.identity)


def dry_run_text(plan: SweepPlan, store: Store) -> str:
    """--dry-run: the counts, then one line per distinct run with its state."""
    states = plan.states(store)
    count = {s: sum(v == s for v in states.values()) for s in ("done", "started", "new")}
    lines = [f"{len(plan.cells)} scenario cells, {len(plan.runs)} distinct runs "
             f"({len(plan.cells) - len(plan.runs)} cells answered by a shared run); "
             f"{count['done']} done, {count['started']} started (resume from a checkpoint), {count['new']} to train",
             f"store: {store.root}"]
    lines += [f"no attack cells at {count} point{'s' if count != 1 else ''}: {reason}"
              for reason, count in plan.unattacked.items()]
    for run in plan.runs.values():
        varying = {k: run.options[k] for k in plan.spec.axes if k != "schemes" and reads(run, k)}
        lines.append(f"  {run.key}  {states[run.key]:<7}  {run.scheme:<11}  {run.scenario:<14}  "
                     f"{run.cells:>3} cell{'s' if run.cells != 1 else ' '}  {describe(varying)}")
    return "\n".join(lines) + "\n"


__all__ = ["ID_COLUMNS", "Cell", "Run", "SweepPlan", "partition_digest", "run_namespace", "identity_of",
           "plan_sweep", "reads", "check_store", "dry_run_text"]
