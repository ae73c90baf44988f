"""python -m byzbn.data.cifar10_subset on a fake CIFAR-10 folder in torchvision's python-pickle layout.

The fake batches hold a few images whose pixels encode their index, so the test can check which images a
draw took; torchvision's md5 checks are switched off for the fake files (their content is not CIFAR's).
"""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from byzbn.data import load_dataset
from byzbn.data._torchvision import import_torchvision
from byzbn.data.cifar10_subset import TEST_SIZE, TRAIN_SIZE, main

PER_BATCH, TEST_IMAGES = 8, 12


def write_fake_cifar10(root):
    """cifar-10-batches-py/ with 5 training batches of PER_BATCH images and a test batch: image i is filled
    with i % 256 in channel 0 and i // 256 in channel 1, labelled i % 10."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(first, count):
        index = np.arange(first, first + count)
        data = np.zeros((count, 3, 32, 32), dtype=np.uint8)
        data[:, 0], data[:, 1] = (index % 256)[:, None, None], (index // 256)[:, None, None]
        return {"data": data.reshape(count, 3072), "labels": list(index % 10)}

    for b in range(5):
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch(b * PER_BATCH, PER_BATCH)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(1000, TEST_IMAGES)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{k}" for k in range(10)]}))
    return root


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    cifar = import_torchvision().datasets.cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    return write_fake_cifar10(tmp_path / "cifar")


def draw(root, out, *extra):
    return main(["--data-root", str(root), "--out", str(out), "--train-size", "10", "--test-size", "4", *extra])


def test_a_draw_is_a_seeded_subset_of_each_split_with_its_sha256_printed(fake_root, tmp_path, capsys):
    assert draw(fake_root, tmp_path / "a.npz", "--seed", "3") == 0
    printed = capsys.readouterr().out
    data = (tmp_path / "a.npz").read_bytes()
    assert printed.startswith(hashlib.sha256(data).hexdigest() + "  ") and "10 train, 4 test images, seed 3" in printed
    with np.load(tmp_path / "a.npz") as npz:
        assert npz["x_train"].shape == (10, 3, 32, 32) and npz["x_train"].dtype == np.uint8
        assert npz["y_test"].shape == (4,) and npz["y_test"].dtype == np.int64
        index = npz["x_train"][:, 0, 0, 0].astype(int) + 256 * npz["x_train"][:, 1, 0, 0].astype(int)
        assert len(set(index)) == 10 and list(index) == sorted(index) and index.max() < 5 * PER_BATCH
        assert list(npz["y_train"]) == list(index % 10)  # each image keeps its label
        test_index = npz["x_test"][:, 0, 0, 0].astype(int) + 256 * npz["x_test"][:, 1, 0, 0].astype(int)
        assert set(test_index) <= set(range(1000, 1000 + TEST_IMAGES))
    dataset = load_dataset(f"npz:{tmp_path / 'a.npz'}")  # byzbn reads it as any npz dataset
    assert tuple(dataset.x_train.shape) == (10, 3, 32, 32)


def test_the_same_seed_writes_the_same_bytes_and_another_seed_another_draw(fake_root, tmp_path, capsys):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert draw(fake_root, tmp_path / f"{name}.npz", "--seed", seed) == 0
    a, b, c = ((tmp_path / f"{n}.npz").read_bytes() for n in "abc")
    assert a == b and a != c


def test_the_defaults_are_the_shipped_subsets_sizes_and_a_missing_folder_exits_2(tmp_path, capsys):
    assert (TRAIN_SIZE, TEST_SIZE) == (5085, 1017)
    assert main(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "no CIFAR-10 there" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_a_size_larger_than_the_split_exits_2(fake_root, tmp_path, capsys):
    assert draw(fake_root, tmp_path / "x.npz", "--test-size", "13") == 2
    assert "test_size=13 is out of range: valid 1..12" in capsys.readouterr().err


def test_the_readme_prints_the_sha256_of_the_shipped_subset():
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256((repo / "data" / "cifar10_subset.npz").read_bytes()).hexdigest()
    assert f"`{digest}`" in (repo / "README.md").read_text()
    with np.load(repo / "data" / "cifar10_subset.npz") as npz:
        assert (len(npz["y_train"]), len(npz["y_test"])) == (TRAIN_SIZE, TEST_SIZE)
