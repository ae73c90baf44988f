"""The grids shipped with byzbn: `python -m byzbn.sweep --preset NAME` (NAME.toml in this folder).

A preset is a sweep config like any other (keys: attack_eval's long option names; a list is an axis,
the first axis varying slowest); `--set KEY=VALUE` scales it (e.g. --set steps=1000 --set dataset=cifar10).
They are package data, so a non-editable install has them too.
"""
from __future__ import annotations

from importlib import resources

# The attacks every preset answering "worst case over attacks" covers besides the fixed ones: the
# optimal (boundary-searched) and BN-adaptive attacks and those tuned against robust rules. A stronger
# attack the catalogue gains belongs here (tests/test_sweep_presets.py checks the presets against it).
STRONG_ATTACKS = ("optimal-alie", "optimal-foe", "bn-adaptive", "minmax", "minsum", "fang-trimmed")
WORST_CASE_PRESETS = ("breakdown", "heatmap", "schemes-under-attack")


def preset_names() -> list[str]:
    """The presets this installation ships, sorted."""
    return sorted(p.name[: -len(".toml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML text of preset `name`; ValueError listing the valid names for an unknown one."""
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}: valid presets are {preset_names()}")
    return resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


__all__ = ["STRONG_ATTACKS", "WORST_CASE_PRESETS", "preset_names", "preset_text"]
