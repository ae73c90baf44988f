"""What the name registries (attacks, defenses, schemes) share: filing a class, checking parameters."""
from __future__ import annotations

import inspect
from typing import Iterable, Optional


def file_class(registry: dict, kind: str, name: str, cls, base: Optional[type] = None):
    """Add cls to registry under name (unique), as the class decorators do; sets cls.name."""
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"@register({name!r}) must decorate a {base.__name__} subclass, got {cls!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} name must be a non-empty str, got {name!r}")
    if name in registry:
        raise ValueError(f"{kind} name {name!r} is already registered to {registry[name].__name__}")
    cls.name = name
    registry[name] = cls
    return cls


def lookup(registry: dict, kind: str, name):
    """registry[name], or a ValueError naming the valid names ("unknown attack 'x': valid attacks are [...]")."""
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r}: valid {kind}s are {sorted(registry)}")
    return registry[name]


def keyword_parameters(cls, skip: Iterable[str] = ()) -> list[str]:
    """The keyword parameters of cls.__init__, in order, without self and `skip`."""
    skipped = {"self", *skip}
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in skipped and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def parameter_defaults(cls, skip: Iterable[str] = ()) -> dict:
    """{parameter: default} for the keyword parameters of cls.__init__; required ones map to inspect.Parameter.empty."""
    params = inspect.signature(cls.__init__).parameters
    return {name: params[name].default for name in keyword_parameters(cls, skip)}


def required_parameters(cls, skip: Iterable[str] = ()) -> list[str]:
    """The keyword parameters of cls.__init__ without a default (a caller must give them)."""
    return [k for k, v in parameter_defaults(cls, skip).items() if v is inspect.Parameter.empty]


def check_parameters(kind: str, name: str, params: Iterable[str], valid: Iterable[str],
                     required: Iterable[str] = ()) -> None:
    """Raise ValueError naming unknown (or missing required) parameters and the valid ones."""
    valid, params = list(valid), set(params)
    unknown = sorted(params - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {kind} {name!r}: valid parameters are {valid}")
    missing = [p for p in required if p not in params]
    if missing:
        raise ValueError(f"missing parameter(s) {missing} for {kind} {name!r}: valid parameters are {valid}")


def accepts_positional(fn, count: int) -> bool:
    """Whether fn can be called with `count` positional arguments (the call contract of a plugin)."""
    try:
        inspect.signature(fn).bind(*([None] * count))
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): trust the caller
        return True
    return True
