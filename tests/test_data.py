"""Datasets: real data shapes/labels/standardization, npz round trips and errors, torchvision on CPU."""
import collections
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from byzbn.data import DATASET_NAMES, Dataset, datasets, load_dataset


def _channel_moments(x: torch.Tensor):
    x64 = x.double()
    return x64.mean(dim=(0, 2, 3)), x64.std(dim=(0, 2, 3), unbiased=False)


def _standardize_reference(train_u8: np.ndarray, test_u8: np.ndarray, stats_from=None):
    """float64 reference: /255, then per-channel train mean and biased std."""
    train, test = train_u8.astype(np.float64) / 255, test_u8.astype(np.float64) / 255
    stats = train if stats_from is None else stats_from.astype(np.float64) / 255
    mean, std = stats.mean(axis=(0, 2, 3), keepdims=True), stats.std(axis=(0, 2, 3), keepdims=True)
    return (train - mean) / std, (test - mean) / std


def _check_common(ds: Dataset, shape_chw, n_train, n_test, num_classes):
    assert ds.input_shape == shape_chw
    assert ds.x_train.shape == (n_train, *shape_chw) and ds.x_test.shape == (n_test, *shape_chw)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.num_classes == num_classes
    for y in (ds.y_train, ds.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
    mean, std = _channel_moments(ds.x_train)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-5, rtol=0)


def _raw_mnist5k_rows():
    with gzip.open(datasets._mnist5k_path(), "rt") as handle:
        return np.loadtxt(handle, delimiter=",", dtype=np.int64)


def test_mnist5k_is_the_real_5000_digits_split_4000_1000_stratified():
    ds = load_dataset("mnist5k")
    _check_common(ds, (1, 28, 28), 4000, 1000, 10)
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [400] * 10
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [100] * 10
    # Standardization is affine with a positive scale and MNIST uses the full 0..255 range, so the raw
    # pixels come back by min/max rescaling; train + test must be exactly the shipped rows, each once.
    x = torch.cat([ds.x_train, ds.x_test]).double().flatten(1).numpy()
    low, high = x.min(), x.max()
    pixels = np.rint((x - low) / (high - low) * 255).astype(np.int64)
    recovered = np.concatenate([pixels, torch.cat([ds.y_train, ds.y_test]).numpy()[:, None]], axis=1)
    raw = _raw_mnist5k_rows()
    assert raw.shape == (5000, 785)
    assert collections.Counter(map(bytes, recovered)) == collections.Counter(map(bytes, raw))


def test_mnist5k_split_is_fixed_and_loads_are_cached():
    first = load_dataset("mnist5k")
    assert load_dataset("mnist5k") is first
    fresh = datasets._load_embedded("mnist5k")
    assert torch.equal(fresh.x_train, first.x_train) and torch.equal(fresh.y_test, first.y_test)
    # Not label-sorted: consumers slicing a prefix must not get one class only.
    assert len(torch.unique(first.y_train[:50])) > 5


def test_digits_is_sklearn_8x8_with_a_20_percent_stratified_test_split():
    ds = load_dataset("digits")
    _check_common(ds, (1, 8, 8), 1438, 359, 10)
    counts = torch.bincount(ds.y_test, minlength=10) / (
        torch.bincount(ds.y_test, minlength=10) + torch.bincount(ds.y_train, minlength=10))
    assert torch.all((counts - 0.2).abs() < 0.01)


def test_cifar10_subset_from_npz(cifar10_npz):
    ds = load_dataset(f"npz:{cifar10_npz}")
    _check_common(ds, (3, 32, 32), 5085, 1017, 10)
    assert ds.name == f"npz:{cifar10_npz}"
    with np.load(cifar10_npz) as archive:
        x_train, x_test = archive["x_train"], archive["x_test"]
        assert torch.equal(ds.y_test, torch.from_numpy(archive["y_test"]))
    # The statistics come from the whole train split; comparing every 25th image keeps the test quick.
    train_ref, test_ref = _standardize_reference(x_train[::25], x_test[::25], stats_from=x_train)
    torch.testing.assert_close(ds.x_train[::25].double(), torch.from_numpy(train_ref), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ds.x_test[::25].double(), torch.from_numpy(test_ref), atol=1e-5, rtol=1e-6)


def _synthetic(rng, n, layout):
    shapes = {"nchw": (n, 3, 6, 5), "nhwc": (n, 6, 5, 3), "gray": (n, 6, 5), "nhwc1": (n, 6, 5, 1)}
    return rng.integers(0, 256, size=shapes[layout], dtype=np.uint8)


@pytest.mark.parametrize("layout,channels", [("nchw", 3), ("nhwc", 3), ("gray", 1), ("nhwc1", 1)])
def test_npz_round_trip_standardizes_test_with_train_statistics(tmp_path, layout, channels):
    rng = np.random.default_rng(1)
    x_train, x_test = _synthetic(rng, 12, layout), _synthetic(rng, 5, layout)
    y_train, y_test = rng.integers(0, 4, 12), np.array([0, 1, 2, 3, 6])
    path = tmp_path / "toy.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset(f"npz:{path}")
    to_nchw = {"nchw": lambda a: a, "nhwc": lambda a: a.transpose(0, 3, 1, 2),
               "nhwc1": lambda a: a.transpose(0, 3, 1, 2), "gray": lambda a: a[:, None]}[layout]
    train_ref, test_ref = _standardize_reference(to_nchw(x_train), to_nchw(x_test))
    assert ds.input_shape == (channels, 6, 5)
    assert ds.num_classes == 7  # max label over both splits + 1
    torch.testing.assert_close(ds.x_train.double(), torch.from_numpy(train_ref), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ds.x_test.double(), torch.from_numpy(test_ref), atol=1e-6, rtol=1e-6)
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()


def test_constant_channel_is_centred_not_divided_by_zero(tmp_path):
    x = np.full((4, 1, 4, 4), 7, dtype=np.uint8)
    path = tmp_path / "flat.npz"
    np.savez(path, x_train=x, y_train=np.array([0, 1, 0, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    ds = load_dataset(f"npz:{path}")
    assert torch.equal(ds.x_train, torch.zeros_like(ds.x_train))
    assert torch.equal(ds.x_test, torch.zeros_like(ds.x_test))


def test_npz_missing_file_is_a_value_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(ValueError, match=f"dataset file not found: {missing}"):
        load_dataset(f"npz:{missing}")


def test_npz_missing_keys_are_named(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 1, 4, 4), np.uint8), y_train=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"lacks keys \['x_test', 'y_test'\]"):
        load_dataset(f"npz:{path}")


@pytest.mark.parametrize("arrays,match", [
    (dict(x_train=np.zeros((2, 1, 4, 4), np.float32)), "uint8"),
    (dict(x_train=np.zeros((2, 5, 4, 4), np.uint8)), r"\[N, C, H, W\]"),
    (dict(y_train=np.array([0, 1, 2])), "1-D array of 2 labels"),
    (dict(y_train=np.array([0.0, 1.0])), "integer labels"),
    (dict(y_test=np.array([0, -1])), ">= 0"),
    (dict(x_test=np.zeros((2, 1, 4, 5), np.uint8)), "share"),
])
def test_npz_malformed_arrays_are_rejected(tmp_path, arrays, match):
    good = dict(x_train=np.zeros((2, 1, 4, 4), np.uint8), y_train=np.array([0, 1]),
                x_test=np.zeros((2, 1, 4, 4), np.uint8), y_test=np.array([1, 0]))
    path = tmp_path / "bad.npz"
    np.savez(path, **{**good, **arrays})
    with pytest.raises(ValueError, match=match):
        load_dataset(f"npz:{path}")


@pytest.mark.parametrize("spec", ["mnist", "", "npz:", "CIFAR10", "cifar10_subset"])
def test_unknown_spec_lists_the_valid_ones(spec):
    with pytest.raises(ValueError, match="mnist5k" if spec != "npz:" else "npz:PATH"):
        load_dataset(spec)


def test_dataset_names_all_load_or_need_a_root():
    assert DATASET_NAMES == ("mnist5k", "digits", "cifar10")
    with pytest.raises(ValueError, match="needs data_root"):
        load_dataset("cifar10")


def test_cifar10_with_an_empty_root_says_not_found(tmp_path):
    # Goes through torchvision (made importable on CPU torch by byzbn.data._torchvision).
    with pytest.raises(ValueError, match="not found under data_root.*download=True"):
        load_dataset("cifar10", data_root=str(tmp_path), download=False)


def test_import_torchvision_is_idempotent_and_gives_datasets_and_transforms():
    from byzbn.data._torchvision import import_torchvision

    torchvision = import_torchvision()
    assert import_torchvision() is torchvision
    assert hasattr(torchvision.datasets, "CIFAR10")
    images = torchvision.transforms.ToTensor()(np.zeros((4, 4, 3), np.uint8))
    assert images.shape == (3, 4, 4)


def test_dataset_validates_its_tensors():
    x, y = torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="labels must lie in"):
        Dataset("toy", x, y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="x_train must be a float32"):
        Dataset("toy", x.double(), y, x, y, num_classes=3)
    with pytest.raises(ValueError, match="y_test must be an int64"):
        Dataset("toy", x, y, x, y[:2], num_classes=3)
    assert Dataset("toy", x, y, x, y, num_classes=3).input_shape == (1, 4, 4)


def test_torchvision_is_imported_lazily_and_then_usable_in_a_fresh_process():
    # A fresh interpreter: in this one torchvision may already be imported by an earlier test.
    script = (
        "import sys, byzbn, byzbn.data, byzbn.nn.models\n"
        "assert 'torchvision' not in sys.modules, 'byzbn imports torchvision eagerly'\n"
        "from byzbn.data._torchvision import import_torchvision\n"
        "tv = import_torchvision()\n"
        "import torchvision.datasets, torchvision.transforms\n"
        "assert sys.modules['torchvision'] is tv and import_torchvision() is tv\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
