"""A random subset of CIFAR-10 as an npz file byzbn reads (`--dataset npz:FILE`), with its sha256.

    python -m byzbn.data.cifar10_subset --data-root DIR --out FILE.npz [--seed S]

reads torchvision's CIFAR-10 from DIR (torchvision.datasets.CIFAR10 with download=False: DIR holds
cifar-10-batches-py/, as `--download` of attack_eval leaves it) and draws, with numpy's generator
seeded by S, TRAIN_SIZE training and TEST_SIZE test images uniformly without replacement (a random
~10 % of each split, not stratified by class), in the order of the original splits. The file holds
x_train, x_test (uint8, [N, 3, 32, 32]) and y_train, y_test (int64), written byte for byte the same for
the same data and seed (fixed zip timestamps), so its sha256 identifies the draw. The docs' pages use
the subset shipped in the repository, npz:data/cifar10_subset.npz, of the same sizes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

TRAIN_SIZE, TEST_SIZE = 5085, 1017
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can record: no wall clock in the bytes


def draw_subset(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int,
                train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE) -> dict:
    """{x_train, y_train, x_test, y_test}: `train_size` and `test_size` rows drawn without replacement
    (sorted: the original order), images as uint8 NCHW, labels int64. The inputs are not changed."""
    for name, size, images in (("train_size", train_size, x_train), ("test_size", test_size, x_test)):
        if not 1 <= size <= len(images):
            raise ValueError(f"{name}={size} is out of range: valid 1..{len(images)}")
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(len(x_train), size=train_size, replace=False))
    test = np.sort(rng.choice(len(x_test), size=test_size, replace=False))
    nchw = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(0, 3, 1, 2))  # noqa: E731
    return {"x_train": nchw(x_train[train]), "y_train": np.asarray(y_train, dtype=np.int64)[train],
            "x_test": nchw(x_test[test]), "y_test": np.asarray(y_test, dtype=np.int64)[test]}


def npz_bytes(arrays: dict) -> bytes:
    """An npz archive (deflated) of `arrays` whose bytes depend on the arrays alone."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, payload.getvalue())
    return buffer.getvalue()


def read_cifar10(data_root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's CIFAR-10 train and test splits from `data_root` (never downloaded): NHWC uint8 images."""
    from byzbn.data._torchvision import import_torchvision

    datasets = import_torchvision().datasets
    try:
        train = datasets.CIFAR10(data_root, train=True, download=False)
        test = datasets.CIFAR10(data_root, train=False, download=False)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted."
        raise ValueError(f"--data-root {data_root}: no CIFAR-10 there ({error}); download it with "
                         "torchvision.datasets.CIFAR10(root, download=True) or attack_eval --download") from error
    return train.data, np.asarray(train.targets), test.data, np.asarray(test.targets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m byzbn.data.cifar10_subset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="the folder holding cifar-10-batches-py/")
    parser.add_argument("--out", required=True, help="the npz file to write")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    parser.add_argument("--train-size", type=int, default=TRAIN_SIZE, help=f"training images (default {TRAIN_SIZE})")
    parser.add_argument("--test-size", type=int, default=TEST_SIZE, help=f"test images (default {TEST_SIZE})")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        arrays = draw_subset(*read_cifar10(args.data_root), seed=args.seed, train_size=args.train_size,
                             test_size=args.test_size)
    except ValueError as error:
        print(f"python -m byzbn.data.cifar10_subset: error: {error}", file=sys.stderr)
        return 2
    data = npz_bytes(arrays)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"{hashlib.sha256(data).hexdigest()}  {out}  ({len(arrays['y_train'])} train, "
          f"{len(arrays['y_test'])} test images, seed {args.seed})")
    return 0


__all__ = ["TRAIN_SIZE", "TEST_SIZE", "draw_subset", "npz_bytes", "read_cifar10", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
