"""Fixtures shared by the tests (the repository-root conftest.py sets up pytest itself)."""
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # CI has 2 cores; the tests' tiny tensors and convolutions run faster, and far more predictably,
    # on one intra-op thread than with a barrier per op.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_npz(path: Path, train: int = 400, test: int = 100, seed: int = 0) -> Path:
    """An 8×8 uint8 dataset in the npz layout: class k is a bright row k % 8 (and column 7 for k ≥ 8) plus noise,
    learnable in a few dozen steps, so accuracies move and differ between seeds."""
    rng = np.random.default_rng(seed)

    def images(count):
        labels = rng.integers(0, 10, count)
        x = rng.integers(0, 60, (count, 8, 8))
        x[np.arange(count), labels % 8, :] += 150
        x[np.arange(count), :, labels // 8 * 7] += 60
        return x.clip(0, 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = images(train)
    x_test, y_test = images(test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture
def make_tiny_npz():
    """write_tiny_npz itself, for a size of one's own (a test module cannot import `conftest`: the
    benchmarks' conftest.py shares the name when both folders are collected)."""
    return write_tiny_npz
