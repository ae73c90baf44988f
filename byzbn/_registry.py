"""The one registry every extension kind uses: aggregators, pre-aggregators, attacks, schemes, models.

    SCHEMES = Registry("scheme", base=Scheme, context=("steps",))
    register_scheme = SCHEMES.register              # @register_scheme("mine") on a Scheme subclass
    SCHEMES.make("mine", 300, k=3)                  # Mine(300, k=3), k validated against Mine.__init__

A Registry is a dict name -> class with the kind's contract checked when a class is registered, so
an incomplete plugin fails there, on one line, rather than at step 1 of a run:

- the class derives from the kind's base (or, where the kind accepts them, is a plain class or a
  function that `plain` turns into a class, or rejects with a one-line message);
- it implements every abstract method of the base (e.g. a scheme's bn_pass and server_round);
- its capabilities, the base's class attributes annotated `ClassVar[bool]` (e.g. `stateful`,
  `randomized`, `poisons_data`), are bools, and a capability's method exists exactly when the
  capability is on (`requires`, e.g. {"stateful": "with_center"}): a stateful rule without
  with_center, or a rule with with_generator that does not say `randomized = True`, is refused;
- `__init__` takes the kind's context arguments (`context`, e.g. f for a rule, steps for a scheme) by
  name; its other named parameters are the class's parameters, validated by `check` and `make`. A kind
  without a base (model builders) files functions, which take the context positionally.
"""
from __future__ import annotations

import inspect
import re
import typing
from typing import Callable, ClassVar, Iterable, Mapping, Optional


class Registry(dict):
    """name -> registered class of one extension kind (a dict, so `name in R`, `R[name]`, `sorted(R)` work)."""

    def __init__(self, kind: str, base: Optional[type] = None, context: Iterable[str] = (),
                 requires: Optional[Mapping[str, str]] = None, plain: Optional[Callable] = None):
        super().__init__()
        self.kind = kind
        self.base = base
        self.context = tuple(context)
        self.requires = dict(requires or {})
        self.plain = plain  # plain(name, obj) -> a class to file, for what does not derive from base

    # --- registering ---------------------------------------------------------------------------------
    def register(self, name: str):
        """Decorator: check `obj` against the contract and file it under `name`; returns obj unchanged."""

        def decorate(obj):
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj) -> type:
        """File obj (checked, or turned into a class by `plain`) under `name`; returns the filed class."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty str, got {name!r}")
        if name in self:
            raise ValueError(f"{self.kind} name {name!r} is already registered to {self[name].__name__}")
        derives = self.base is None or (isinstance(obj, type) and issubclass(obj, self.base))
        if not derives and self.plain is None:
            raise ValueError(f"@register_{_snake(self.kind)}({name!r}) must decorate a {self.base.__name__} "
                             f"subclass, got {obj!r}")
        cls = obj if derives else self.plain(name, obj)
        self.check_contract(name, cls)
        if isinstance(cls, type):
            cls.name = name
        self[name] = cls
        return cls

    def check_contract(self, name: str, cls: type) -> None:
        """Raise a one-line ValueError if cls does not meet the kind's contract (see the module doc)."""
        where = f"{self.kind} {name!r}: {getattr(cls, '__name__', cls)}"
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise ValueError(f"{where} does not implement {', '.join(m + '()' for m in missing)}, which every "
                             f"{self.kind} must define")
        for cap in self.capabilities():
            value = getattr(cls, cap, False)
            if not isinstance(value, bool):
                raise ValueError(f"{where}: capability {cap} must be a bool class attribute, got {value!r}")
        for cap, method in self.requires.items():
            on, has = getattr(cls, cap, False), callable(getattr(cls, method, None))
            if on and not has:
                raise ValueError(f"{where} sets {cap} = True but defines no {method}()")
            if has and not on:
                raise ValueError(f"{where} defines {method}() but not {cap} = True: declare the capability, or "
                                 f"the runner never calls {method}()")
        if not isinstance(cls, type):  # a function kind (model builders): the context comes positionally
            if self.context and not accepts_positional(cls, len(self.context)):
                raise ValueError(f"{where} must take ({', '.join(self.context)}) positionally first")
            return
        try:
            params = list(inspect.signature(cls.__init__).parameters)[1:]
        except (TypeError, ValueError):  # no signature: nothing to check
            return
        absent = [c for c in self.context if c not in params]
        if absent:
            raise ValueError(f"{where}.__init__ takes no parameter {', '.join(absent)} (a {self.kind} takes "
                             f"{', '.join(self.context)} first, then its own named parameters)")

    def capabilities(self) -> list[str]:
        """The base's capabilities: its class attributes annotated ClassVar[bool], in declaration order."""
        return capabilities(self.base) if self.base is not None else []

    # --- looking up and building -----------------------------------------------------------------------
    def lookup(self, name) -> type:
        """The class registered as `name`, or a ValueError naming the valid names."""
        return lookup(self, self.kind, name)

    def _context_names(self, cls) -> tuple[str, ...]:
        # A class takes the context by name; a function (model builder) positionally, whatever its names.
        if isinstance(cls, type) or not self.context:
            return self.context
        return tuple(list(_signature(cls).parameters)[:len(self.context)])

    def parameters(self, name: str) -> list[str]:
        """The named parameters `name` accepts besides the context arguments."""
        cls = self.lookup(name)
        return keyword_parameters(cls, skip=self._context_names(cls))

    def defaults(self, name: str) -> dict:
        """{parameter: default} of `name` (required ones map to inspect.Parameter.empty)."""
        cls = self.lookup(name)
        return parameter_defaults(cls, skip=self._context_names(cls))

    def check(self, name: str, params: Mapping) -> dict:
        """Validate the parameter names for `name`; returns them with the defaults filled in."""
        cls = self.lookup(name)
        skip = self._context_names(cls)
        check_parameters(self.kind, name, params, keyword_parameters(cls, skip), required_parameters(cls, skip))
        return {**parameter_defaults(cls, skip), **params}

    def make(self, name: str, *context, **params):
        """Build `name` with the context arguments (positional, in `context` order) and validated parameters."""
        if len(context) != len(self.context):
            raise TypeError(f"{self.kind} {name!r} is built with the context ({', '.join(self.context)}), "
                            f"got {len(context)} positional argument(s)")
        self.check(name, params)
        return self[name](*context, **params)


def _snake(kind: str) -> str:
    return kind.replace("-", "_").replace(" ", "_")


def capabilities(base: type) -> list[str]:
    """The class attributes of `base` (and its bases) annotated ClassVar[bool], base classes' first."""
    found: list[str] = []
    for klass in reversed(base.__mro__):
        for key, hint in vars(klass).get("__annotations__", {}).items():
            if key not in found and _is_classvar_bool(hint):
                found.append(key)
    return found


def _is_classvar_bool(hint) -> bool:
    # Read without evaluating: modules with `from __future__ import annotations` hold strings.
    if isinstance(hint, str):
        return re.fullmatch(r"(typing\.)?ClassVar\[bool\]", hint.replace(" ", "")) is not None
    return typing.get_origin(hint) is ClassVar and typing.get_args(hint) == (bool,)


def lookup(registry: dict, kind: str, name):
    """registry[name], or a ValueError naming the valid names ("unknown attack 'x': valid attacks are [...]")."""
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r}: valid {kind}s are {sorted(registry)}")
    return registry[name]


def _signature(obj) -> inspect.Signature:
    """What building obj calls: a class's __init__ (self then skipped by name), a function itself."""
    return inspect.signature(obj.__init__ if isinstance(obj, type) else obj)


def keyword_parameters(cls, skip: Iterable[str] = ()) -> list[str]:
    """The keyword parameters of cls.__init__ (or of a function), in order, without self and `skip`."""
    skipped = {"self", *skip}
    return [p.name for p in _signature(cls).parameters.values()
            if p.name not in skipped and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def parameter_defaults(cls, skip: Iterable[str] = ()) -> dict:
    """{parameter: default} for the keyword parameters of cls.__init__; required ones map to inspect.Parameter.empty."""
    params = _signature(cls).parameters
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


def defines(cls: type, method: str) -> bool:
    """Whether cls (or a base other than object) defines `method` itself."""
    return any(method in vars(k) for k in cls.__mro__ if k is not object)


__all__ = ["Registry", "capabilities", "lookup", "keyword_parameters", "parameter_defaults", "required_parameters",
           "check_parameters", "accepts_positional", "defines"]
