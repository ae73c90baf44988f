"""RunConfig: one run configuration, typed and frozen, exactly what config.json holds.

Built once per command: from the checked command-line options (byzbn.runs.config.validate_run, which
every command uses: attack_eval, reproduce, the sweep's cells, the Flower app's run config), or read
back from a config.json with `RunConfig.from_json`, which first brings an older file up to date in one
place (`migrate`). `to_json()` is the dict config.json holds, and `from_json(to_json())` gives the same
config back; the sweep's store key is derived from it (byzbn.runs.identity).

Options a command has besides the shared run options (Flower's --rounds, --fraction-train, ...) are
kept, as given, in `extras`: they are written beside the others and compared on --resume like them.
"""
from __future__ import annotations

import copy
import functools
import json
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Optional

from byzbn.schemes.fixbn import DEFAULT_FIXBN_FREEZE
from byzbn.schemes.groupnorm import DEFAULT_GROUPS

# Options that do not change what a run computes: --resume may change them.
NOT_COMPARED_ON_RESUME = ("out", "resume", "quiet")


@dataclass(frozen=True)
class RunConfig:
    """Every option of a run, by its config.json name. Fields with a default were added after the first
    config.json files were written: a file without one ran with that default (see `migrate`)."""

    # federation
    schemes: tuple[str, ...]
    clients: int
    byzantine: int
    honest: int                     # n - f
    fixbn_freeze: float
    # attack and defense
    attack: str                     # 'none' for no attack
    attack_params: dict
    target: str
    attack_fields: str
    defense: str
    pre: str                        # pre-aggregators in order, comma-separated, or 'none'
    # data
    dataset: str
    data_root: Optional[str]
    download: bool
    heterogeneity: str
    samples_per_client: int
    # training
    steps: int
    batch_size: int
    lr: float
    momentum: float
    width: float
    eval_every: int
    seed: int
    device: str                     # resolved: 'cpu' or 'cuda'
    # output
    checkpoint_every: int
    out: str
    quiet: bool
    resume: bool
    # added later (a config.json without them ran with these values)
    groups: int = DEFAULT_GROUPS
    algorithm: str = "dsgd"
    local_steps: int = 1
    reset_client_momentum: bool = False
    plugins: tuple[str, ...] = ()
    defense_params: dict = field(default_factory=dict)
    pre_params: dict = field(default_factory=dict)       # pre-aggregator -> {parameter: value}
    scheme_params: dict = field(default_factory=dict)    # scheme -> {parameter: value}
    model: str = "cnn"
    participation: float = 1.0
    defense_f: str = "run"
    diagnostics: bool = False
    # the command's own options (not shared run options), as given
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        hints = _hints()
        for f in fields(self):
            object.__setattr__(self, f.name, _typed(f.name, hints[f.name], getattr(self, f.name)))

    # ------------------------------------------------------------------ config.json
    def to_json(self) -> dict:
        """What config.json holds: every option by name (tuples as lists), the command's extras beside them."""
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "extras"}
        data.update(copy.deepcopy(self.extras))
        return data

    @classmethod
    def from_json(cls, data: dict) -> "RunConfig":
        """The config a config.json dict describes, older files migrated first; ValueError (one line) if it
        lacks an option or holds a value of the wrong type."""
        data = migrate(data)
        names = {f.name for f in fields(cls)} - {"extras"}
        missing = sorted(n for n in names if n not in data and _required(n))
        if missing:
            raise ValueError(f"the run configuration lacks {missing}")
        known = {k: copy.deepcopy(v) for k, v in data.items() if k in names}
        extras = {k: copy.deepcopy(v) for k, v in data.items() if k not in names}
        return cls(**known, extras=extras)

    def text(self) -> str:
        """config.json's text."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))

    # ------------------------------------------------------------------ derived views
    def with_changes(self, **changes: Any) -> "RunConfig":
        """A copy with some options (or extras, by name) changed."""
        names = {f.name for f in fields(self)}
        extras = {k: v for k, v in changes.items() if k not in names}
        own = {k: v for k, v in changes.items() if k in names}
        if extras:
            own["extras"] = {**self.extras, **extras}
        return replace(self, **own)

    def differences(self, saved: "RunConfig") -> list[str]:
        """The options (extras included) that differ from `saved`'s, but those --resume may change."""
        mine, theirs = self.to_json(), saved.to_json()
        return sorted(k for k in set(mine) | set(theirs)
                      if k not in NOT_COMPARED_ON_RESUME and mine.get(k) != theirs.get(k))

    @property
    def attacked(self) -> bool:
        return self.attack != "none"

    def pre_names(self) -> list[str]:
        """The pre-aggregators in the order they apply ([] for none)."""
        return [name for name in self.pre.split(",") if name and name != "none"]

    def params_of_scheme(self, scheme: str) -> dict:
        """The --scheme-param values given for `scheme`."""
        return dict(self.scheme_params.get(scheme, {}))


@functools.lru_cache(maxsize=None)
def _hints() -> dict:
    return typing.get_type_hints(RunConfig)


def _required(name: str) -> bool:
    f = next(f for f in fields(RunConfig) if f.name == name)
    return f.default is MISSING and f.default_factory is MISSING


def migrate(data: dict) -> dict:
    """A config.json dict brought up to date (not mutated): every option added since the first files were
    written gets the value those runs ran with. The one place that knows older formats."""
    data = dict(data)
    for f in fields(RunConfig):
        if f.name not in data and f.name != "extras" and not _required(f.name):
            data[f.name] = f.default if f.default is not MISSING else f.default_factory()
    # Flower's config.json once left these out: it trains without checkpoints and never resumes.
    data.setdefault("resume", False)
    if "steps" in data:
        data.setdefault("checkpoint_every", data["steps"])
    return data


def added_defaults() -> dict:
    """{option: the value a config.json without it ran with} (what `migrate` fills in)."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(RunConfig) if f.name != "extras" and not _required(f.name)}


def _typed(name: str, kind, value):
    """`value` as field `name`'s type (ints stay ints, numbers become floats, lists tuples); ValueError else."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:  # Optional[X]
        return None if value is None else _typed(name, typing.get_args(kind)[0], value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"run configuration {name}={value!r}: expected a list of strings")
        return tuple(str(v) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"run configuration {name}={value!r}: expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"run configuration {name}={value!r}: expected an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"run configuration {name}={value!r}: expected a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"run configuration {name}={value!r}: expected a string")
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise ValueError(f"run configuration {name}={value!r}: expected a table")
        return copy.deepcopy(value)
    return value


def _plain(value):
    """A field's value as JSON holds it."""
    if isinstance(value, tuple):
        return list(value)
    return copy.deepcopy(value)


__all__ = ["NOT_COMPARED_ON_RESUME", "RunConfig", "migrate", "added_defaults"]
