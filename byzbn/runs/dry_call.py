"""Call the built attack and defense once on a few random rows, before anything is written.

Some parameters can only be checked against the run: mimic's `epsilon` must index one of the h = n − f
honest rows, a rule's bound may depend on the rows a pre-aggregator leaves, and a plugin may return the
wrong shape or type. Building the objects does not see that; calling them does. So the validator calls
the attack on [h, DRY_WIDTH] random rows with the run's n and f (for every attacked channel and BN
field) and the defense on the resulting [n, DRY_WIDTH] submission, and reports what fails as a bad
argument naming the flag, or, for a plugin, as the plugin's fault. The call is cheap (tiny rows) and
deterministic (its own seeded generator).

Attacks that need the run's model and batch (`needs_whole_submission`, e.g. bn-adaptive) are not called
here: their parameters are checked when they are built, their rows at every step.
"""
from __future__ import annotations

import sys
from typing import Optional

import torch

from byzbn.runs.errors import ArgumentError, one_line

DRY_WIDTH = 6  # columns of the random rows: enough for every rule, small enough to cost nothing
DRY_SEED = 0
BUILT_IN_PACKAGES = ("byzbn", "attacks", "defenses", "kernels")


def origin(obj) -> Optional[str]:
    """Where a plugin object comes from ("plugin module M (FILE)"); None for byzbn's own objects."""
    module = getattr(type(obj), "__module__", "") or ""
    fn = getattr(type(obj), "fn", None)  # a function attack: its function's module is the plugin's
    module = getattr(fn, "__module__", module) or module
    if module.split(".")[0] in BUILT_IN_PACKAGES:
        return None
    where = getattr(sys.modules.get(module), "__file__", None)
    return f"plugin module {module}" + (f" ({where})" if where else "")


def _report(flag: str, obj, error: Exception) -> ArgumentError:
    """The one-line error of a failed dry call: a bad argument, or the plugin's fault."""
    message = one_line(error)
    where = origin(obj)
    if where is not None:
        return ArgumentError(f"{flag}: the {where} failed on {DRY_WIDTH}-column test rows: "
                             f"{type(error).__name__}: {message}")
    return ArgumentError(message if message.startswith("--") else f"{flag}: {message}")


def _honest_rows(h: int, field: str, generator: torch.Generator) -> torch.Tensor:
    rows = torch.randn(h, DRY_WIDTH, generator=generator)
    return rows.abs() + 0.5 if field == "var" else rows  # variances are positive


def _called(flag: str, obj, call):
    """call(); a ValueError (anyone's) or any exception raised by a plugin is reported on one line."""
    try:
        return call()
    except ValueError as error:
        raise _report(flag, obj, error) from error
    except Exception as error:  # noqa: BLE001 - a plugin may raise anything; byzbn's own errors propagate
        if origin(obj) is None:
            raise
        raise _report(flag, obj, error) from error


def _rule_of(defense):
    """The object to blame for a failing defense call: the first plugin stage, else the defense."""
    return next((stage for stage in getattr(defense, "stages", ()) if origin(stage) is not None), defense)


def dry_call(attack, defense, n: int, f: int, channels, defense_flag: str, attack_flag: str) -> None:
    """Call `attack` (None: no attack) and `defense` on random rows as the run will; ArgumentError if one fails.

    channels: the attacked channels ({"stats"}, {"grads"} or both; from byzbn.fl.scenario.TARGETS).
    """
    from byzbn.attacks import AttackContext

    key = _key(attack, defense, n, f, channels)
    if key is not None and key in _PASSED:
        return
    generator = torch.Generator().manual_seed(DRY_SEED)
    h = n - f
    calls = [(channel, field) for channel in sorted(channels)
             for field in (("mean", "var") if channel == "stats" else ("",))]
    whole = attack is not None and getattr(attack, "needs_whole_submission", False)
    for channel, field in calls:
        honest = _honest_rows(h, field, generator)
        if attack is not None and not whole and f > 0:
            own = _honest_rows(f, field, generator)  # what data-poisoning Byzantine clients computed
            context = AttackContext(n=n, f=f, defense=defense, generator=generator, step=1, channel=channel,
                                    field=field, own_rows=own)
            rows = _called(attack_flag, attack, lambda: attack(honest, context))
            if not isinstance(rows, torch.Tensor) or tuple(rows.shape) != (f, DRY_WIDTH):
                got = list(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
                raise _report(attack_flag, attack, ValueError(f"returned {got}, not a tensor [f={f}, d]"))
        else:
            rows = honest[:1].repeat(f, 1)  # any f rows: the defense must take n of them
        submission = torch.cat([honest, rows])
        if not torch.isfinite(submission).all():
            continue  # a rule may refuse non-finite rows: at run time that marks the run diverged
        staged = defense
        if getattr(defense, "randomized", False):
            staged = staged.with_generator(generator)
        if getattr(defense, "stateful", False):
            staged = staged.with_center(torch.zeros(DRY_WIDTH))
        blame = _rule_of(defense)
        out = _called(defense_flag, blame, lambda: staged(submission))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (DRY_WIDTH,):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise _report(defense_flag, blame, ValueError(f"returned {got}, not a tensor [d]"))
    if key is not None:
        _PASSED.add(key)


# The calls that passed in this process, by what they called: a sweep's points share their attack and defense.
_PASSED: set = set()


def _key(attack, defense, n: int, f: int, channels):
    try:  # the built objects' reprs name their class and parameters
        return (type(attack), repr(attack), type(defense), repr(defense), n, f, tuple(sorted(channels)))
    except Exception:  # noqa: BLE001 - an object without a usable repr is simply called every time
        return None


__all__ = ["DRY_WIDTH", "origin", "dry_call"]
