"""The grids shipped with byzbn: `python -m byzbn.sweep --preset NAME` (NAME.toml in this folder).

A preset is a sweep config like any other (keys: attack_eval's long option names; a list is an axis,
the first axis varying slowest); `--set KEY=VALUE` scales it (e.g. --set steps=1000 --set dataset=cifar10).
They are package data, so a non-editable install has them too.
"""
from __future__ import annotations

from importlib import resources


def preset_names() -> list[str]:
    """The presets this installation ships, sorted."""
    return sorted(p.name[: -len(".toml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML text of preset `name`; ValueError listing the valid names for an unknown one."""
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}: valid presets are {preset_names()}")
    return resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


__all__ = ["preset_names", "preset_text"]
