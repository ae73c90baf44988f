"""What the name registries (attacks, defenses, schemes) share: filing a class, checking parameters."""
from __future__ import annotations

import inspect
from typing import Iterable, Optional


def file_class(registry: dict, kind: str, name: str, cls, base: Optional[type] = None):
    """Add cls to registry under name (unique), as the class decorators do; sets cls.name."""
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"@register({name!r}) must decorate a {base.__name__} subclass, got {cls!r}")
    if name in registry:
        raise ValueError(f"{kind} name {name!r} is already registered to {registry[name].__name__}")
    cls.name = name
    registry[name] = cls
    return cls


def keyword_parameters(cls, skip: Iterable[str] = ()) -> list[str]:
    """The keyword parameters of cls.__init__, in order, without self and `skip`."""
    skipped = {"self", *skip}
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in skipped and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_parameters(kind: str, name: str, params: Iterable[str], valid: Iterable[str]) -> None:
    """Raise ValueError naming unknown parameters and the valid ones."""
    valid = list(valid)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {kind} {name!r}: valid parameters are {valid}")
