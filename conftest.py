"""Repository-wide pytest setup: Triton interpreter on CPU, --benchmark, hypothesis profiles, data paths."""
import os

import torch

# Triton reads TRITON_INTERPRET when @triton.jit decorates, i.e. when byzbn.kernels is first imported.
# Without a GPU, run the Triton kernels through the interpreter so their tests execute on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# "ci" is what .ci/run selects: the property suite runs >= 10,000 examples in total there, derandomized so
# that a CI verdict is reproducible (the "dev" profile keeps exploring new random examples).
settings.register_profile("ci", max_examples=1000, deadline=None, print_blob=True, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

CIFAR10_NPZ_ENV = "BYZBN_CIFAR10_NPZ"


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the throughput benchmarks in benchmarks/ (and only them)")


def pytest_collection_modifyitems(config, items):
    run_benchmarks = config.getoption("--benchmark")
    skip_bench = pytest.mark.skip(reason="benchmark: run with `pytest --benchmark`")
    selected, deselected = [], []
    for item in items:
        is_bench = "benchmark" in getattr(item, "fixturenames", ()) or item.get_closest_marker("benchmark")
        if run_benchmarks and not is_bench:
            deselected.append(item)
            continue
        if is_bench and not run_benchmarks:
            item.add_marker(skip_bench)
        selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


REPO_CIFAR10_NPZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cifar10_subset.npz")


@pytest.fixture(scope="session")
def cifar10_npz():
    """Path of the real CIFAR-10 subset: $BYZBN_CIFAR10_NPZ, else the repository's data/cifar10_subset.npz;
    skips when neither exists (e.g. an installed wheel's tests, which do not carry the data)."""
    path = os.environ.get(CIFAR10_NPZ_ENV) or REPO_CIFAR10_NPZ
    if not os.path.isfile(path):
        pytest.skip(f"{CIFAR10_NPZ_ENV}={path} does not exist")
    return path
