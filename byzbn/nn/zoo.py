"""The models a run can train (`--model`): built-in names, registered names, and a user's builder function.

    --model cnn | resnet20 | resnet18           built in (byzbn.nn.models, byzbn.nn.resnet)
    --model NAME                                a builder registered with @register_model("NAME")
    --model my_models.py:build                  FUNCTION in a Python file
    --model mylab.models:build                  FUNCTION in an importable module

A builder is FUNCTION(input_shape, num_classes) -> nn.Module, input_shape the dataset's (C, H, W); a
builder that also takes a `width` parameter receives --width (the built-ins do). It returns a plain
model with ordinary BatchNorm1d/BatchNorm2d layers; `build_model` federates it for the run's scheme
(byzbn.nn.federate), ordering the BN layers by a forward of a dummy batch. The loss is the
cross-entropy of the model's output, so a model may return logits or log-probabilities (log_softmax
is idempotent under it): the built-ins return log-probabilities.

A file is executed once per process, under the module name --plugin gives it, so the same file may be
both a --plugin and a --model.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from byzbn._registry import Registry, accepts_positional
from byzbn.nn.federate import federate
from byzbn.nn.models import make_cnn
from byzbn.nn.resnet import make_resnet18, make_resnet20

# name -> builder FUNCTION(input_shape, num_classes[, width])
MODELS = Registry("model", context=("input_shape", "num_classes"))
DEFAULT_MODEL = "cnn"
SPEC_FORMS = "a model name, FILE.py:FUNCTION or package.module:FUNCTION"


def register_model(name: str):
    """Decorator: file a builder FUNCTION(input_shape, num_classes[, width]) -> nn.Module under `name`."""

    def register(builder):
        if not callable(builder):
            raise ValueError(f"@register_model({name!r}) must decorate a function, got {builder!r}")
        if isinstance(name, str) and ":" in name:
            raise ValueError(f"model name {name!r} must not contain ':' (that is the FILE:FUNCTION form)")
        if not accepts_positional(builder, 2):
            raise ValueError(f"model {name!r}: {getattr(builder, '__name__', builder)} must take (input_shape, "
                             f"num_classes)")
        return MODELS.register(name)(builder)

    return register


register_model("cnn")(make_cnn)
register_model("resnet20")(make_resnet20)
register_model("resnet18")(make_resnet18)


def _file_module(path: Path):
    """The module of a Python file, executed once per process (under the name --plugin gives it)."""
    path = path.expanduser().resolve()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"byzbn_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise ValueError(f"{path.name}: no such file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path.name}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - whatever the file raised: the --model value is bad
        del sys.modules[name]
        raise ValueError(f"importing {path.name} failed ({type(error).__name__}: {error})") from error
    return module


def _module(source: str):
    if source.endswith(".py") or "/" in source or "\\" in source or Path(source).is_file():
        return _file_module(Path(source))
    if not all(part.isidentifier() for part in source.split(".")):
        raise ValueError(f"{source!r} is neither a Python file nor a dotted module name")
    try:
        return importlib.import_module(source)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"importing {source} failed ({type(error).__name__}: {error})") from error


def model_builder(spec: str) -> Callable[..., nn.Module]:
    """The builder `spec` names: a registered name, FILE.py:FUNCTION or package.module:FUNCTION."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model must be {SPEC_FORMS}, got {spec!r}")
    source, colon, function = spec.rpartition(":")
    if not colon or not source:
        if spec in MODELS:
            return MODELS[spec]
        raise ValueError(f"unknown model {spec!r}: valid models are {sorted(MODELS)}, or FILE.py:FUNCTION or "
                         f"package.module:FUNCTION")
    builder = getattr(_module(source), function, None)
    if builder is None:
        raise ValueError(f"{source} has no {function!r}")
    if not callable(builder) or not accepts_positional(builder, 2):
        raise ValueError(f"{spec} must be a function (input_shape, num_classes) -> nn.Module")
    return builder


def plain_model(spec: str, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    """The model `spec` builds for the data, with its ordinary BN layers (not federated)."""
    builder = model_builder(spec)
    takes_width = "width" in inspect.signature(builder).parameters
    model = builder(tuple(input_shape), num_classes, width=width) if takes_width else builder(tuple(input_shape),
                                                                                               num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} must build an nn.Module, got {type(model).__name__}")
    return model


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int, width: float, scheme) -> nn.Module:
    """The model `spec` builds for the data, federated for `scheme` (a Scheme or its name).

    Draws the model's initial parameters from torch's global generator (seed it first), exactly as the
    builder alone does: the FBN CNN built here equals make_cnn(..., norm=scheme.make_norm).
    """
    model = plain_model(spec, input_shape, num_classes, width)
    return federate(model, scheme, example_input=torch.zeros(2, *input_shape))


__all__ = ["MODELS", "DEFAULT_MODEL", "register_model", "model_builder", "plain_model",
           "build_model"]
