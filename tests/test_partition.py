"""Partitioners: equal disjoint shares, reproducibility, gamma-similarity and Dirichlet heterogeneity."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from byzbn.data import PARTITION_KINDS, label_histogram, parse_partition, partition

# mnist5k-like labels: 10 balanced classes of 400 (the mnist5k train split), label-sorted like a raw dump.
BALANCED = torch.arange(10).repeat_interleave(400)


def _mean_total_variation(labels, parts, num_classes):
    """Mean over clients of the total-variation distance between a client's and the global label mix."""
    hist = label_histogram(labels, parts, num_classes).double()
    client = hist / hist.sum(dim=1, keepdim=True)
    overall = torch.bincount(labels, minlength=num_classes).double() / len(labels)
    return float(0.5 * (client - overall).abs().sum(dim=1).mean())


specs = st.sampled_from(["iid", "extreme", "gamma:0", "gamma:0.3", "gamma:1", "dirichlet:0.01",
                         "dirichlet:0.5", "dirichlet:10"])


@st.composite
def labelled_federations(draw):
    num_classes = draw(st.integers(1, 8))
    n = draw(st.integers(1, 240))
    labels = torch.tensor(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    n_clients = draw(st.integers(1, min(n, 30)))
    return labels, n_clients, draw(specs), draw(st.integers(0, 2**32))


@given(labelled_federations())
def test_parts_are_equal_sized_disjoint_and_reproducible(case):
    labels, n_clients, spec, seed = case
    parts = partition(labels, n_clients, spec, seed)
    share = len(labels) // n_clients
    assert len(parts) == n_clients
    for part in parts:
        assert part.dtype == torch.int64 and part.shape == (share,)
        assert torch.equal(part, torch.sort(part).values)
    union = torch.cat(parts)
    assert len(torch.unique(union)) == len(union) == n_clients * share
    assert int(union.min()) >= 0 and int(union.max()) < len(labels)
    again = partition(labels, n_clients, spec, seed)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    hist = label_histogram(labels, parts, int(labels.max()) + 1)
    assert hist.sum(dim=1).tolist() == [share] * n_clients
    assert torch.all(hist.sum(dim=0) <= torch.bincount(labels))


@given(labelled_federations())
def test_extreme_gives_clients_consecutive_label_ranges_in_order(case):
    labels, n_clients, _, seed = case
    parts = partition(labels, n_clients, "extreme", seed)
    num_classes = int(labels.max()) + 1
    hist = label_histogram(labels, parts, num_classes)
    kept = hist.sum(dim=0)
    previous_high = -1
    for row in hist:
        present = torch.nonzero(row).flatten()
        if len(present) == 0:  # share = 0
            continue
        low, high = int(present.min()), int(present.max())
        assert low >= previous_high  # the clients are consecutive cuts of one label-sorted sequence
        # Labels strictly inside a client's range cannot be shared with another client.
        assert torch.equal(row[low + 1:high], kept[low + 1:high])
        previous_high = high


def test_extreme_on_mnist5k_like_labels_gives_one_label_per_client():
    parts = partition(BALANCED, 10, "extreme", seed=3)
    hist = label_histogram(BALANCED, parts, 10)
    assert torch.equal(hist, 400 * torch.eye(10, dtype=torch.int64))
    assert torch.equal(hist, label_histogram(BALANCED, partition(BALANCED, 10, "gamma:0", seed=3), 10))


def test_extreme_with_a_remainder_gives_at_most_two_labels_per_client():
    labels = BALANCED[7:]  # 3993 samples: 393 of class 0, the remainder dropped at random
    for seed in range(5):
        hist = label_histogram(labels, partition(labels, 10, "extreme", seed), 10)
        assert torch.all((hist > 0).sum(dim=1) <= 2)


def test_gamma_one_is_iid_and_close_to_the_global_label_mix():
    iid = partition(BALANCED, 10, "iid", seed=11)
    assert all(torch.equal(a, b) for a, b in zip(iid, partition(BALANCED, 10, "gamma:1", seed=11)))
    hist = label_histogram(BALANCED, iid, 10)
    # Each count is hypergeometric with mean 40 and sd ~5.7: [15, 65] is > 4 sd either side.
    assert int(hist.min()) >= 15 and int(hist.max()) <= 65
    assert _mean_total_variation(BALANCED, iid, 10) < 0.15


def test_heterogeneity_grows_as_gamma_shrinks():
    distances = [_mean_total_variation(BALANCED, partition(BALANCED, 10, f"gamma:{g}", seed=5), 10)
                 for g in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert distances == sorted(distances)
    # The heterogeneous (1 - gamma) part is one label per client here: TV ~ (1 - gamma) * 0.9.
    for gamma, distance in zip((1.0, 0.75, 0.5, 0.25, 0.0), distances):
        assert abs(distance - (1 - gamma) * 0.9) < 0.1


def test_gamma_gives_each_client_a_gamma_fraction_drawn_uniformly():
    parts = partition(BALANCED, 10, "gamma:0.5", seed=2)
    hist = label_histogram(BALANCED, parts, 10)
    # Client i's heterogeneous half is the i-th 200-sample cut of the label-sorted rest, i.e. mostly
    # label i (the cuts drift from the class boundaries by a few tens); its homogeneous half holds
    # ~20 of every label, so no label is missing anywhere.
    assert torch.all(hist.diagonal() >= 150)
    assert torch.all(hist >= 1)


@given(st.integers(0, 2**32))
def test_small_dirichlet_alpha_is_more_skewed_than_large(seed):
    skewed = _mean_total_variation(BALANCED, partition(BALANCED, 10, "dirichlet:0.05", seed), 10)
    mixed = _mean_total_variation(BALANCED, partition(BALANCED, 10, "dirichlet:100", seed), 10)
    assert mixed < 0.15 < skewed


def test_dirichlet_falls_back_when_wanted_classes_run_out():
    # 50 clients on 2 classes with alpha tiny: most want one class entirely, pools deplete fast.
    labels = torch.tensor([0] * 30 + [1] * 470)
    parts = partition(labels, 50, "dirichlet:0.001", seed=0)
    assert [len(p) for p in parts] == [10] * 50
    assert len(torch.unique(torch.cat(parts))) == 500


def test_different_seeds_give_different_splits():
    a = partition(BALANCED, 10, "iid", seed=0)
    b = partition(BALANCED, 10, "iid", seed=1)
    assert not all(torch.equal(x, y) for x, y in zip(a, b))


def test_one_client_gets_everything_and_n_clients_n_gets_singletons():
    labels = torch.tensor([2, 0, 1, 1, 0])
    for spec in ("iid", "extreme", "gamma:0.5", "dirichlet:1"):
        assert torch.equal(partition(labels, 1, spec, 0)[0], torch.arange(5))
        assert sorted(int(p) for p in partition(labels, 5, spec, 0)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("spec,expected", [
    ("iid", ("iid", None)), ("extreme", ("extreme", None)), ("gamma:0", ("gamma", 0.0)),
    ("gamma:0.25", ("gamma", 0.25)), ("gamma:1", ("gamma", 1.0)), ("dirichlet:0.1", ("dirichlet", 0.1)),
    ("dirichlet:1e3", ("dirichlet", 1000.0)),
])
def test_parse_partition_accepts_the_valid_forms(spec, expected):
    assert parse_partition(spec) == expected


@pytest.mark.parametrize("spec", ["", "IID", "gamma", "gamma:", "gamma:x", "gamma:-0.1", "gamma:1.5",
                                  "gamma:nan", "dirichlet:0", "dirichlet:-1", "dirichlet:inf",
                                  "dirichlet:nan", "pathological:2", "iid:1", 3])
def test_parse_partition_rejects_and_lists_valid_forms(spec):
    with pytest.raises(ValueError, match="valid forms are iid, gamma:G, dirichlet:A, extreme"):
        parse_partition(spec)
    with pytest.raises(ValueError, match="valid forms"):
        partition(BALANCED, 2, spec, 0)
    assert PARTITION_KINDS == ("iid", "gamma:G", "dirichlet:A", "extreme")


@pytest.mark.parametrize("labels,n_clients,seed,match", [
    (BALANCED, 0, 0, r"n_clients=0 is out of range: valid \[1, 4000\]"),
    (BALANCED, 4001, 0, r"n_clients=4001 is out of range"),
    (BALANCED, 2.0, 0, "n_clients must be an int"),
    (BALANCED, 2, -1, "seed=-1 is out of range"),
    (BALANCED.float(), 2, 0, "integer dtype"),
    (BALANCED.reshape(40, 100), 2, 0, "1-D"),
    (torch.tensor([], dtype=torch.int64), 1, 0, "non-empty"),
    (torch.tensor([0, -1, 2]), 1, 0, ">= 0"),
])
def test_partition_validates_arguments(labels, n_clients, seed, match):
    with pytest.raises(ValueError, match=match):
        partition(labels, n_clients, "iid", seed)


def test_label_histogram_validates_and_counts():
    labels = torch.tensor([0, 2, 2, 1])
    hist = label_histogram(labels, [torch.tensor([0, 1]), torch.tensor([2, 3])], 3)
    assert hist.tolist() == [[1, 0, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match="num_classes=2"):
        label_histogram(labels, [torch.tensor([0])], 2)
    with pytest.raises(ValueError, match=r"parts\[0\] must be a 1-D int64"):
        label_histogram(labels, [torch.tensor([0.0])], 3)
