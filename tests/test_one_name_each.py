"""One name, one thing: the BN pass's module, context manager and layer property; the two pre parsers;
figures of a claims page written whole or not at all."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import byzbn.nn
from byzbn.grid.claims.common import Section
from byzbn.grid.claims.page import image_names, save_images


def test_the_bn_pass_names_each_mean_one_thing():
    module = importlib.import_module("byzbn.nn.bn_passes")
    import byzbn.nn.bn_passes as bound

    assert bound is module and module.__name__ == "byzbn.nn.bn_passes"   # the module, not a function
    assert byzbn.nn.run_bn_pass is module.run_bn_pass                    # the context manager
    assert not hasattr(byzbn.nn, "bn_pass")
    layer = byzbn.nn.FederatedBatchNorm(3)
    assert layer.current_pass == byzbn.nn.BNPass() and not hasattr(layer, "bn_pass")
    with byzbn.nn.run_bn_pass([layer], byzbn.nn.BNPass(mode="global")):
        assert layer.current_pass.mode == "global"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("byzbn.nn.bn_pass")


def test_the_defense_spec_and_the_command_line_text_have_their_own_parsers():
    from byzbn.defenses.defense import pre_stages
    from byzbn.runs.config import parse_pre

    assert pre_stages(["nnm", ("bucketing", {"s": 2})]) == [("nnm", {}), ("bucketing", {"s": 2})]
    assert parse_pre("nnm,bucketing") == ["nnm", "bucketing"] and parse_pre("none") == []
    import byzbn.defenses.defense as defense

    assert not hasattr(defense, "parse_pre")


class _HalfWritten:
    """A figure whose saving writes part of the image, then fails (a full disk, an interrupted process)."""

    def savefig(self, target, **kwargs):
        data = b"\x89PNG partial"
        target.write(data) if hasattr(target, "write") else Path(target).write_bytes(data)
        raise OSError("no space left on device")


def test_a_figure_that_fails_to_save_leaves_the_previous_image_whole(tmp_path):
    section = Section("demo", figures={"curves.png": _HalfWritten()})
    (target,) = image_names(section)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / target).write_bytes(b"the previous image")
    with pytest.raises(OSError, match="no space left"):
        save_images(section, tmp_path, folder)
    assert (folder / target).read_bytes() == b"the previous image"
    assert sorted(p.name for p in folder.iterdir()) == [target]  # no temporary file left behind


def test_a_copied_sweep_image_arrives_whole(tmp_path):
    (tmp_path / "heatmap.png").write_bytes(b"\x89PNG the sweep's image")
    section = Section("demo", figures={"heatmap.png": "heatmap.png"})
    save_images(section, tmp_path, tmp_path / "images")
    (target,) = image_names(section)
    assert (tmp_path / "images" / target).read_bytes() == b"\x89PNG the sweep's image"


def test_one_dataset_cache_serves_every_loader_and_reads_a_rewritten_file_again(make_tiny_npz, tmp_path):
    import os

    from byzbn.data import load_dataset
    from byzbn.runs import config as validator

    path = make_tiny_npz(tmp_path / "data.npz", train=60, test=20, seed=0)
    first = load_dataset(f"npz:{path}")
    assert load_dataset(f"npz:{path}") is first
    assert not hasattr(validator, "DATASETS") and "datasets" not in validator.validate_run.__code__.co_varnames
    make_tiny_npz(path, train=80, test=20, seed=1)  # rewritten in place: another size and time
    os.utime(path, ns=(1, 1))
    again = load_dataset(f"npz:{path}")
    assert again is not first and again.x_train.shape[0] == 80
