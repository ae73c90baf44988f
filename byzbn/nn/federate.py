"""One call that makes a model federated: every BatchNorm layer becomes the scheme's layer.

    model = byzbn.nn.federate(my_model, "fbn")            # or a Scheme from byzbn.schemes.make_scheme

Like `torch.nn.SyncBatchNorm.convert_sync_batchnorm`, but the input model is left untouched: federate
returns a converted copy. Every `nn.BatchNorm1d`, `nn.BatchNorm2d` and `nn.SyncBatchNorm` is replaced,
under the same qualified name, by `scheme.make_norm(num_features)` (a FederatedBatchNorm for naive, fbn,
fixbn, fedtan and centralized, a HybridBatchNorm for hbn, a GroupNorm for groupnorm), with the BN
layer's affine parameters, running statistics, eps and momentum copied into it where the new layer has
them (GroupNorm keeps the affine parameters and eps; it has no statistics). Whatever cannot be converted
faithfully is a ValueError naming the module: track_running_stats=False, momentum=None (a cumulative
average), affine=False where the scheme's layer is affine, LazyBatchNorm (no channel count yet),
BatchNorm3d, subclasses of the BN classes (their forward may differ), a layer registered under two
names, a layer the forward skips or calls twice (byzbn keeps one statistics row per layer and call).
A model with no BN layer under a scheme that exchanges statistics, and a model that is already
federated, are errors too.

The converted model records its normalization layers' names in `norm_layer_names`, in forward order
when `example_input` is given (a forward in eval mode with hooks on the BN layers), else in the model's
order (its own `norm_layer_names` when it has them, as make_cnn's models do, else registration order).
byzbn.nn.federated_bn_layers follows that order, and so does every per-layer list of a run.
"""
from __future__ import annotations

import copy
import importlib
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from byzbn.nn.norm import NORM_LAYER_NAMES_ATTR, FederatedBatchNorm

CONVERTED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
# Attribute of a federated model: the name of the scheme it was federated for.
FEDERATED_ATTR = "federated_scheme"


def _scheme(scheme):
    """The scheme object: `scheme` itself, or make_scheme(name) (default parameters) for a name."""
    if isinstance(scheme, str):
        # byzbn.schemes builds on byzbn.nn, so the registry (plugins' schemes included) is reached at call time.
        return importlib.import_module("byzbn.schemes").make_scheme(scheme, 1)
    if not callable(getattr(scheme, "make_norm", None)):
        raise ValueError(f"scheme must be a scheme name or a byzbn.schemes.Scheme, got {type(scheme).__name__}")
    return scheme


def _scheme_name(scheme) -> str:
    return getattr(scheme, "name", "") or type(scheme).__name__


def _check_layer(name: str, layer: nn.Module) -> None:
    """Raise if BN layer `name` cannot be converted faithfully."""
    where = f"module {name!r} ({type(layer).__name__})"
    if isinstance(layer, LazyModuleMixin):
        raise ValueError(f"{where} is a lazy BN layer whose channel count is not known yet: build the model with "
                         f"BatchNorm1d/BatchNorm2d, or run one forward before federating it")
    if isinstance(layer, nn.BatchNorm3d):
        raise ValueError(f"{where}: BatchNorm3d is not supported (byzbn federates BatchNorm1d/BatchNorm2d and "
                         f"SyncBatchNorm)")
    if type(layer) not in CONVERTED:
        raise ValueError(f"{where} subclasses a BN class: its forward may differ from BN's, so it cannot be "
                         f"replaced faithfully (use BatchNorm1d/BatchNorm2d/SyncBatchNorm)")
    if not layer.track_running_stats:
        raise ValueError(f"{where} has track_running_stats=False: a federated BN layer normalizes with (and the "
                         f"server evaluates with) running statistics")
    if layer.momentum is None:
        raise ValueError(f"{where} has momentum=None (a cumulative average): federated BN updates the running "
                         f"statistics with a fixed momentum, e.g. 0.1")


def bn_layer_names(model: nn.Module) -> list[str]:
    """The qualified names of the model's BN layers (registration order), each checked for conversion."""
    seen: dict[int, str] = {}
    names = []
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, _BatchNorm):
            continue
        if id(module) in seen:
            raise ValueError(f"module {name!r} is the same BN layer as {seen[id(module)]!r}: give each use its own "
                             f"layer (byzbn keeps one statistics row per layer)")
        if not name:
            raise ValueError("the model is itself a BN layer: federate a model that contains BN layers")
        seen[id(module)] = name
        _check_layer(name, module)
        names.append(name)
    return names


def forward_order(model: nn.Module, names: list[str], example_input: torch.Tensor) -> list[str]:
    """`names` in the order one eval-mode forward of `example_input` runs them; each must run exactly once.

    The model is left as it was (training flags restored; eval mode leaves the BN buffers alone).
    """
    calls: list[str] = []
    hooks = [model.get_submodule(name).register_forward_hook(lambda *_, name=name: calls.append(name))
             for name in names]
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    except Exception as error:  # noqa: BLE001 - whatever the user's forward raised: report it on one line
        raise ValueError(f"the model's forward fails on an input of shape {tuple(example_input.shape)} "
                         f"({type(error).__name__}: {' '.join(str(error).split())})") from error
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes:
            module.training = mode
    skipped = [name for name in names if name not in calls]
    if skipped:
        raise ValueError(f"BN layer(s) {skipped} do not run in the model's forward: remove them (byzbn keeps one "
                         f"statistics row per layer, and a layer that never runs has none)")
    twice = sorted({name for name in calls if calls.count(name) > 1})
    if twice:
        raise ValueError(f"BN layer(s) {twice} run more than once per forward: give each call its own layer")
    return calls


def _model_order(model: nn.Module, names: list[str]) -> list[str]:
    """The model's own forward order when it records one for exactly these layers, else `names`."""
    own = getattr(model, NORM_LAYER_NAMES_ATTR, None)
    return list(own) if own is not None and sorted(own) == sorted(names) else names


def convert_layer(name: str, layer: _BatchNorm, scheme) -> nn.Module:
    """The scheme's layer for BN layer `layer`, with its parameters, statistics, eps and momentum."""
    new = scheme.make_norm(layer.num_features)
    if not isinstance(new, nn.Module):
        raise ValueError(f"scheme {_scheme_name(scheme)!r}: make_norm({layer.num_features}) must return an "
                         f"nn.Module, got {type(new).__name__}")
    new = new.to(device=layer.running_mean.device, dtype=layer.running_mean.dtype).train(layer.training)
    if not layer.affine and isinstance(getattr(new, "weight", None), nn.Parameter):
        raise ValueError(f"module {name!r} ({type(layer).__name__}) has affine=False, but scheme "
                         f"{_scheme_name(scheme)!r}'s layer {type(new).__name__} has learnable affine parameters")
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            source, target = getattr(layer, attr, None), getattr(new, attr, None)
            if isinstance(source, torch.Tensor) and isinstance(target, torch.Tensor):
                target.copy_(source)
                if isinstance(target, nn.Parameter):
                    target.requires_grad_(source.requires_grad)
    for attr in ("eps", "momentum"):
        if hasattr(new, attr):
            setattr(new, attr, float(getattr(layer, attr)))
    return new


def is_federated(model: nn.Module) -> bool:
    """Whether `model` came out of federate or already holds federated BN layers."""
    return getattr(model, FEDERATED_ATTR, None) is not None or any(
        isinstance(m, FederatedBatchNorm) for m in model.modules())


def federate(model: nn.Module, scheme, example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """A copy of `model` with every BN layer replaced by `scheme`'s layer (see the module docstring).

    scheme: a scheme name (built with its default parameters) or a Scheme (byzbn.schemes.make_scheme);
    example_input: a batch the model accepts, to order the layers by a forward (recommended for models
    whose forward does not run the layers in registration order).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    scheme = _scheme(scheme)
    if is_federated(model):
        raise ValueError(f"{type(model).__name__} is already federated: federate the plain model (with ordinary "
                         f"BN layers) once")
    names = bn_layer_names(model)
    if not names and getattr(scheme, "has_stats", True):
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer: scheme {_scheme_name(scheme)!r} has no "
                         f"statistics to federate")
    names = forward_order(model, names, example_input) if example_input is not None else _model_order(model, names)
    federated = copy.deepcopy(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(federated.get_submodule(parent), child, convert_layer(name, federated.get_submodule(name), scheme))
    setattr(federated, NORM_LAYER_NAMES_ATTR, tuple(names))
    setattr(federated, FEDERATED_ATTR, _scheme_name(scheme))
    return federated


__all__ = ["CONVERTED", "FEDERATED_ATTR", "bn_layer_names", "forward_order", "convert_layer", "is_federated",
           "federate"]
