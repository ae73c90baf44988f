"""A sweep config (TOML, a preset, --set KEY=VALUE) -> byzbn.grid.SweepSpec, every value checked by argparse.

Keys are attack_eval's long option names, dashed or underscored (`attack-fields`, `attack_fields`); a list
value is a grid axis (in the file's order, the first varying slowest), a scalar is fixed; options not
given take attack_eval's defaults. Each value goes through the option's own argparse definition (the
shared table, byzbn.cli.options), so types and choices are attack_eval's. Particular keys:

    schemes       always an axis of single schemes: "naive,fbn" or ["naive", "fbn"]
    pre           a chain "nnm" / "nnm,bucketing" / "none"; a list of chains is an axis
    attack_param  "z=1.5" (fixed); a list is an axis whose values are "K=V" or lists of "K=V"
    defense_param, pre_param, scheme_param   likewise ("groups=5", "bucketing.s=2", "fixbn.freeze=0.3"); a
                  scheme_param for a scheme of the schemes axis reaches that scheme's cells only
    download, reset_client_momentum   booleans (true / false)
    plugin        a file or module, or a list of them: imported before anything else, never an axis
    rung          a partial grid: an array of tables ([[rung]] in TOML), each a product of its own values
                  (scalars or lists) over the other keys' values; the grid is every point of any rung, once

Every problem is an ArgumentError naming the key, reported by the command on one line (exit 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from byzbn.cli.errors import OneLineParser
from byzbn.cli.options import Option, run_defaults, run_options
from byzbn.grid.spec import SweepSpec
from byzbn.runs.errors import ArgumentError, check, one_line

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (a dependency there)
    import tomli as tomllib

# Run options that are the command's own flags, not config keys.
COMMAND_FLAGS = ("quiet",)
PLUGIN_KEY = "plugin"
RUNG_KEY = "rung"


def read_config(path: str) -> dict:
    """The TOML file at `path` as a dict (ArgumentError when it cannot be read or parsed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ArgumentError(f"{path}: cannot read it ({type(error).__name__}: {one_line(error)})") from error
    return parse_toml(text, path)


def parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ArgumentError(f"{where}: not valid TOML ({one_line(error)})") from error


def apply_sets(config: dict, sets: list[str]) -> dict:
    """config with each --set KEY=VALUE applied; VALUE is a TOML value ([1, 2], 0.5, true, "x") or a bare string."""
    config = dict(config)
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        check(bool(sep) and bool(key), f"--set {item!r} is malformed: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        spellings = {key, key.replace("-", "_"), key.replace("_", "-")}
        for spelling in spellings:
            config.pop(spelling, None)  # --set replaces the key whichever way the file spells it
        if isinstance(config.get(RUNG_KEY), list):  # ... and in every rung of a ladder
            config[RUNG_KEY] = [{k: v for k, v in rung.items() if k not in spellings} if isinstance(rung, dict)
                                else rung for rung in config[RUNG_KEY]]
        config[key] = value
    return config


def _normalized(config: dict, where: str) -> dict:
    """{dest: value}, refusing keys given twice (attack-fields and attack_fields)."""
    out: dict = {}
    for key, value in config.items():
        dest = key.replace("-", "_")
        check(dest not in out, f"{where}: key {key!r} is given twice (dashed and underscored)")
        out[dest] = value
    return out


def plugins_of(config: dict, where: str) -> list[str]:
    """The config's plugin key as a list of specs."""
    value = _normalized(config, where).get(PLUGIN_KEY, [])
    items = [value] if isinstance(value, str) else value
    check(isinstance(items, list) and all(isinstance(v, str) for v in items),
          f"{where}: key 'plugin' must be a file or module name, or a list of them")
    return list(items)


def _scalar_text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        raise ArgumentError("expected one value here, not a list or table")
    return repr(value) if isinstance(value, float) else str(value)


def _typed(option: Option, value: Any) -> Any:
    """One value through the option's argparse definition."""
    if option.kwargs.get("action") == "store_true":
        check(isinstance(value, bool), f"expected true or false, got {value!r}")
        return value
    parser = OneLineParser(add_help=False)
    parser.add_argument(option.flag, **option.kwargs)
    if option.kwargs.get("action") == "append":
        items = [value] if isinstance(value, str) else value
        check(isinstance(items, list) and all(isinstance(v, str) for v in items),
              f"expected 'K=V' or a list of them, got {value!r}")
        argv = [text for item in items for text in (option.flag, item)]
    else:
        argv = [option.flag, _scalar_text(value)]
    return getattr(parser.parse_args(argv), option.dest)


def _schemes(value: Any) -> list[str]:
    if isinstance(value, str):
        names = [s.strip() for s in value.split(",") if s.strip()]
    else:
        check(isinstance(value, list) and all(isinstance(v, str) and "," not in v for v in value),
              f"expected scheme names, as \"naive,fbn\" or [\"naive\", \"fbn\"], got {value!r}")
        names = [v.strip() for v in value]
    check(bool(names), "is empty")
    return names


def set_keys(sets: list[str]) -> set[str]:
    """The option names (dest) that --set gives, for messages."""
    return {item.partition("=")[0].strip().replace("-", "_") for item in sets}


def spec_from_config(config: dict, name: str, where: str, plugins: list[str], from_set=frozenset()) -> SweepSpec:
    """The grid of `config` (read from `where`; keys in `from_set` came from --set); `plugins`: every plugin
    imported for it."""
    table = {o.dest: o for o in run_options() if o.dest not in COMMAND_FLAGS}
    fixed = {k: v for k, v in run_defaults().items() if k not in COMMAND_FLAGS}
    axes: dict = {}
    normalized = _normalized(config, where)
    rungs = normalized.pop(RUNG_KEY, None)
    for dest, value in normalized.items():
        if dest == PLUGIN_KEY:
            continue
        source = "--set" if dest in from_set else where
        _check_key(table, dest, source)
        try:
            if dest == "schemes" or isinstance(value, list):
                axes[dest] = _axis(table[dest], value)
            else:
                fixed[dest] = _typed(table[dest], value)
        except ArgumentError as error:
            raise ArgumentError(f"{source}: key {dest!r}: {one_line(error)}") from error
        _check_distinct(axes.get(dest, ()), dest, source)
    if "schemes" not in axes:
        axes["schemes"] = tuple(_schemes(fixed["schemes"]))
    ladder = () if rungs is None else _rungs(rungs, table, axes, fixed, where)
    if ladder:
        axes = {k: tuple(dict.fromkeys(v for rung in ladder for v in rung[k])) for k in ladder[0]}
    for dest in axes:
        fixed.pop(dest, None)
    fixed[PLUGIN_KEY] = list(plugins)
    return SweepSpec(axes, fixed, name=name, rungs=ladder)


def _check_key(table: dict, dest: str, source: str) -> None:
    if dest not in table:
        valid = sorted(k for k in table if k != PLUGIN_KEY) + [PLUGIN_KEY, RUNG_KEY]
        raise ArgumentError(f"{source}: unknown key {dest!r}: valid keys are attack_eval's long options {valid}")


def _axis(option: Option, value: Any) -> tuple:
    """The values of one axis (a list, or the schemes' one value), each typed, none twice."""
    if option.dest == "schemes":
        values = tuple(_schemes(value))
    else:
        check(bool(value), "is an empty list (a list is an axis: give its values)")
        values = tuple(_typed(option, v) for v in value)
    return values


def _check_distinct(values: tuple, dest: str, source: str) -> None:
    duplicate = next((v for i, v in enumerate(values) if v in values[:i]), None)
    check(duplicate is None, f"{source}: key {dest!r} lists {duplicate!r} twice")


def _rungs(rungs: Any, table: dict, axes: dict, fixed: dict, where: str) -> tuple:
    """Each [[rung]] as a full product over every key any rung or the base grid varies."""
    check(isinstance(rungs, list) and rungs and all(isinstance(r, dict) for r in rungs),
          f"{where}: key 'rung' must be an array of tables ([[rung]]), each giving the values of that rung")
    typed = []
    for i, rung in enumerate(rungs, 1):
        source = f"{where} rung {i}"
        values = {}
        for dest, value in _normalized(rung, source).items():
            check(dest not in (PLUGIN_KEY, RUNG_KEY), f"{source}: key {dest!r} cannot vary by rung")
            _check_key(table, dest, source)
            try:
                values[dest] = _axis(table[dest], value if isinstance(value, list) or dest == "schemes" else [value])
            except ArgumentError as error:
                raise ArgumentError(f"{source}: key {dest!r}: {one_line(error)}") from error
            _check_distinct(values[dest], dest, source)
        typed.append(values)
    keys = list(dict.fromkeys([*axes, *(k for rung in typed for k in rung)]))
    return tuple({k: rung.get(k, axes.get(k, (fixed.get(k),))) for k in keys} for rung in typed)


__all__ = ["COMMAND_FLAGS", "RUNG_KEY", "read_config", "parse_toml", "apply_sets", "plugins_of", "set_keys", "spec_from_config"]
