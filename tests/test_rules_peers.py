"""bulyan, dnc, signguard and clippedclustering: Bulyan against a brute-force float64 reference written out
here, DnC against a plain SVD reference, the clustering steps against scikit-learn's, planted outliers
removed on constructed cases, non-finite rows, purity, the generator of the randomized rules, runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbn.defenses import Bulyan, ClippedClustering, DnC, SignGuard, make_defense
from byzbn.defenses import bulyan as bulyan_module
from byzbn.defenses import clipped_clustering
from byzbn.defenses.signguard import mean_shift_labels
from byzbn.kernels import row_selection
from defense_runs import F_BYZ, parameter_count, run_attacked

NONFINITE = (float("nan"), float("inf"), float("-inf"))
PEERS = ("bulyan", "dnc", "signguard", "clippedclustering")


# ------------------------------------------------------------------ float64 references, written plainly
def finite(x: torch.Tensor) -> list[bool]:
    return [bool(torch.isfinite(r).all()) for r in x]


def bulyan_reference(x: torch.Tensor, f: int) -> tuple[list[int], torch.Tensor]:
    """(picked rows, output): Krum over the n' rows left, counting max(1, n' − f − 2) nearest others
    (Flower's aggregate_bulyan), θ = n − 2f times; then per coordinate the mean of the β = θ − 2f picked
    values nearest to their median (ties: the lower value)."""
    xd = x.double()
    n, d = xd.shape
    ok = finite(x)
    dist = [[0.0 if i == j else float(((xd[i] - xd[j]) ** 2).sum()) if ok[i] and ok[j] else math.inf
             for j in range(n)] for i in range(n)]
    left, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        k = min(max(len(left) - f - 2, 1), len(left) - 1)
        score = {i: sum(sorted(dist[i][j] for j in left if j != i)[:k]) for i in left}
        best = min(left, key=lambda i: (not ok[i], score[i], i))
        picked.append(best)
        left.remove(best)
    beta = n - 4 * f
    out = []
    for c in range(d):
        values = sorted(float(xd[i, c]) for i in picked)
        t = len(values)
        med = values[t // 2] if t % 2 else (values[t // 2 - 1] + values[t // 2]) / 2
        nearest = sorted(values, key=lambda v: (abs(v - med), v))[:beta]
        out.append(sum(nearest) / beta)
    return sorted(picked), torch.tensor(out, dtype=torch.float64)


def dnc_reference(x: torch.Tensor, f: int, c: float = 1.0) -> torch.Tensor:
    """One DnC iteration over every coordinate (b >= d), with torch's SVD."""
    xd = x.double()
    centred = xd - xd.mean(dim=0)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    scores = (centred @ v) ** 2
    kept = sorted(range(len(xd)), key=lambda i: (float(scores[i]), i))[: len(xd) - int(c * f)]
    return xd[kept].mean(dim=0)


def clipped_mean_reference(x: torch.Tensor, rows, threshold: float) -> torch.Tensor:
    xd = x.double()
    clipped = [xd[i] * min(1.0, threshold / float(xd[i].norm())) if float(xd[i].norm()) > 0 else xd[i] for i in rows]
    return torch.stack(clipped).mean(dim=0)


def median_of_norms(x: torch.Tensor) -> float:
    return float(np.median([float(r.double().norm()) if ok else math.inf for r, ok in zip(x, finite(x))]))


def data(n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)


def tolerance(x: torch.Tensor) -> float:
    scale = float(x[torch.isfinite(x)].abs().max())
    return (2e-5 if x.dtype == torch.float32 else 1e-11) * max(scale, 1.0)


@pytest.fixture(params=["chunks", "whole"])
def chunking(request, monkeypatch):
    """Both ways Bulyan's coordinate stage streams the picked rows: many column chunks or one."""
    monkeypatch.setattr(bulyan_module, "CPU_CHUNK_ELEMENTS", 7 if request.param == "chunks" else 1 << 30)
    return request.param


# ------------------------------------------------------------------ Bulyan = brute force
@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2).flatmap(lambda f: st.tuples(st.just(f), st.integers(4 * f + 3, 4 * f + 6),
                                                     st.integers(1, 4))), st.data())
def test_bulyan_equals_brute_force_on_integer_data_full_of_ties(shape, draw):
    f, n, d = shape
    values = draw.draw(st.lists(st.lists(st.integers(-3, 3), min_size=d, max_size=d), min_size=n, max_size=n))
    x = torch.tensor(values, dtype=torch.float64)
    picked, expected = bulyan_reference(x, f)
    assert Bulyan(f).select(x).tolist() == picked
    assert torch.equal(Bulyan(f)(x), expected)          # exact: integer sums and halves


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, f", [(3, 0), (7, 1), (11, 2), (12, 2), (16, 3)])
def test_bulyan_equals_brute_force_on_continuous_data(chunking, dtype, n, f):
    x = data(n, 9, dtype, seed=n)
    x[: f] += 6.0                                        # outlying rows for Krum to leave out
    picked, expected = bulyan_reference(x, f)
    out = make_defense("bulyan", f)(x)
    assert out.dtype == dtype and out.shape == (9,)
    assert Bulyan(f).select(x).tolist() == picked
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tolerance(x))


def test_bulyan_sorts_with_torch_when_x_requires_grad():
    x = data(11, 6, torch.float64)
    x[4] = float("nan")
    leaf = x.clone().requires_grad_(True)
    out = Bulyan(2)(leaf)
    torch.testing.assert_close(out.detach(), bulyan_reference(x, 2)[1], rtol=0, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(leaf.grad).all() and bool((leaf.grad[4] == 0).all())


@pytest.mark.parametrize("n, f", [(10, 2), (6, 1), (2, 1), (14, 3)])
def test_bulyan_refuses_n_below_4f_plus_3_in_one_line(n, f):
    valid = f"valid 0 <= f <= {max(n - 3, 0) // 4}"
    for defense in (make_defense("bulyan", f), make_defense("bulyan", f, pre="nnm")):
        with pytest.raises(ValueError) as error:
            defense(data(n, 3))
        message = str(error.value)
        assert message == f"f={f} is out of range for bulyan with n={n}: {valid} (bulyan needs n >= 4f + 3)"
        assert "\n" not in message
    torch.testing.assert_close(Bulyan(0)(data(2, 3)), data(2, 3).mean(dim=0))    # f = 0: nothing removed


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # Inf − Inf in the interpreter
def test_bulyan_picks_the_same_rows_from_the_triton_distance_kernel(monkeypatch):
    """On CUDA Bulyan reads the Triton kernel's distances; the interpreter runs that path here."""
    x = data(11, 300)
    x[2, 7] = float("inf")
    expected = Bulyan(2).select(x).tolist()
    monkeypatch.setattr(bulyan_module, "selection_distances",
                        lambda x: row_selection.selection_distances(x, backend="triton"))
    assert Bulyan(2).select(x).tolist() == expected and 2 not in expected


# ------------------------------------------------------------------ DnC = SVD reference
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, f, c", [(7, 2, 1.0), (10, 3, 1.0), (10, 3, 0.5), (5, 0, 1.0)])
def test_dnc_on_every_coordinate_equals_the_svd_reference(dtype, n, f, c):
    x = data(n, 12, dtype, seed=n + f)
    x[1] += 5.0
    out = DnC(f, c=c)(x)                 # b = 10000 >= d: every coordinate, no randomness
    assert out.dtype == dtype and out.shape == (12,)
    torch.testing.assert_close(out.double(), dnc_reference(x, f, c), rtol=0, atol=tolerance(x))


def test_dnc_draws_its_coordinates_from_the_generator():
    x = data(12, 400, torch.float64)
    x[[3, 8], :200] += 2.0               # outlying only on the first half of the coordinates
    rule = DnC(2, b=50)
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    first = rule.with_generator(gen)(x)
    assert not torch.equal(gen.get_state(), state)             # the call drew from gen
    assert rule.generator is None                               # with_generator returned a copy
    torch.testing.assert_close(rule.with_generator(torch.Generator().manual_seed(7))(x), first, rtol=0, atol=0)
    torch.testing.assert_close(rule(x), rule.with_generator(torch.Generator().manual_seed(0))(x), rtol=0, atol=0)
    assert make_defense("dnc", 2).randomized and make_defense("signguard", 2).randomized
    assert DnC.randomized and SignGuard.randomized and not Bulyan.randomized and not ClippedClustering.randomized
    outputs = {tuple(DnC(2, b=3).with_generator(torch.Generator().manual_seed(s)).select(x)) for s in range(8)}
    assert len(outputs) > 1                                     # few coordinates: the draw matters


def test_signguard_draws_its_coordinate_block_from_the_generator():
    rule = SignGuard(2)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    start, length = rule.with_generator(gen).block(1000)
    assert length == 100 and 0 <= start <= 900 and not torch.equal(gen.get_state(), state)
    assert rule.with_generator(torch.Generator().manual_seed(5)).block(1000) == (start, length)
    assert rule.block(1000) == rule.with_generator(torch.Generator().manual_seed(0)).block(1000)
    assert len({rule.with_generator(torch.Generator().manual_seed(s)).block(1000) for s in range(6)}) > 1
    assert SignGuard(2, fraction=1.0).block(7) == (0, 7) and SignGuard(2).block(3) == (SignGuard(2).block(3)[0], 1)


def test_dnc_intersects_the_good_sets_of_its_iterations():
    x = data(12, 400, torch.float64)
    rule = DnC(2, b=20, niters=3).with_generator(torch.Generator().manual_seed(3))
    kept = rule.select(x)
    gen = torch.Generator().manual_seed(3)
    single = DnC(2, b=20)
    sets = [set(single.with_generator(gen).select(x)) for _ in range(3)]   # the same three draws in turn
    assert set(kept) == set.intersection(*sets) and len(kept) >= 12 - 3 * 2


@pytest.mark.parametrize("params, n, match", [
    ({"c": 1.0}, 2, r"f=2 is out of range for dnc with n=2, c=1.0, niters=1: valid niters·⌊c·f⌋ <= 1"),
    ({"niters": 3}, 6, r"niters=3: valid niters·⌊c·f⌋ <= 5"), ({"b": 0}, 6, "b=0"), ({"c": -1.0}, 6, "c=-1.0"),
    ({"beta": 1}, 6, "unknown")])
def test_dnc_bad_parameters_and_n_raise_one_clear_error(params, n, match):
    with pytest.raises(ValueError, match=match):
        make_defense("dnc", 2, **params)(data(n, 3))


# ------------------------------------------------------------------ the clustering steps = scikit-learn's
def test_mean_shift_finds_scikit_learns_largest_cluster():
    from sklearn.cluster import MeanShift, estimate_bandwidth
    for seed in range(6):
        rng = np.random.default_rng(seed)
        sizes = rng.choice(np.arange(2, 10), size=3, replace=False)      # distinct: one largest cluster
        centres = rng.uniform(0, 1, size=(3, 3))
        points = np.concatenate([c + 0.03 * rng.standard_normal((s, 3)) for c, s in zip(centres, sizes)])
        ours = mean_shift_labels(points)
        theirs = MeanShift(bandwidth=estimate_bandwidth(points, quantile=0.5), cluster_all=False).fit(points).labels_
        largest = lambda labels: set(np.flatnonzero(labels == np.bincount(labels[labels >= 0]).argmax()))  # noqa: E731
        assert largest(ours) == largest(theirs)


def test_average_linkage_splits_like_scikit_learn():
    from sklearn.cluster import AgglomerativeClustering
    for seed in range(6):
        x = data(12, 30, torch.float64, seed=seed)
        x[seed % 4: seed % 4 + 3] *= -1.0
        gram = clipped_clustering.gram_matrix(x)
        dist = clipped_clustering.cosine_distances(gram, np.arange(12))
        ours = {tuple(c) for c in clipped_clustering.average_linkage_two_clusters(dist)}
        labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="average").fit(dist).labels_
        assert ours == {tuple(np.flatnonzero(labels == k)) for k in (0, 1)}
        torch.testing.assert_close(torch.from_numpy(gram), x @ x.T)


# ------------------------------------------------------------------ planted outliers
def planted(kind: str, dtype=torch.float64) -> tuple[torch.Tensor, list[int]]:
    """10 rows: 8 honest around a positive point, 2 planted at rows 2 and 7; returns (x, honest rows)."""
    g = torch.Generator().manual_seed(11)
    centre = 1.0 + torch.rand(60, generator=g, dtype=torch.float64)
    honest = centre + 0.2 * torch.randn(8, 60, generator=g, dtype=torch.float64)
    if kind == "opposite":                    # sign-flipped honest rows: same norms, opposite signs
        bad = -honest[:2]
    else:                                     # colluding rows far away in one random direction
        direction = torch.randn(60, generator=g, dtype=torch.float64)
        bad = centre + 40.0 * direction / direction.norm() * centre.norm() + 0.01 * torch.randn(
            2, 60, generator=g, dtype=torch.float64)
    x = torch.empty(10, 60, dtype=torch.float64)
    rows = [0, 1, 3, 4, 5, 6, 8, 9]
    x[rows], x[[2, 7]] = honest, bad
    return x.to(dtype), rows


@pytest.mark.parametrize("kind", ["opposite", "far"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dnc_signguard_and_clippedclustering_remove_planted_outliers(kind, dtype):
    x, honest = planted(kind, dtype)
    tol = tolerance(x)
    assert DnC(2).select(x).tolist() == honest
    torch.testing.assert_close(DnC(2)(x).double(), x.double()[honest].mean(dim=0), rtol=0, atol=tol)
    threshold = median_of_norms(x)
    for rule in (SignGuard(2), ClippedClustering(2)):
        assert rule.select(x).tolist() == honest, rule
        out = rule(x)
        torch.testing.assert_close(out.double(), clipped_mean_reference(x, honest, threshold), rtol=0, atol=tol)
        honest_mean = x.double()[honest].mean(dim=0)
        assert float((out.double() - honest_mean).norm()) < 0.1 * float(honest_mean.norm())


def test_signguard_filters_by_norm_and_by_signs_and_clips_to_the_median_norm():
    x, honest = planted("opposite")
    x[0] *= 4.0                               # honest signs, norm beyond 3·median: the norm filter's
    x[1] *= 0.05                              # below 0.1·median
    kept = SignGuard(2).select(x).tolist()
    assert kept == [3, 4, 5, 6, 8, 9]
    torch.testing.assert_close(SignGuard(2)(x), clipped_mean_reference(x, kept, median_of_norms(x)))
    loose = SignGuard(2, L=0.0, R=10.0).select(x).tolist()
    assert loose == honest                    # the sign clustering alone removes the flipped rows


def test_clippedclustering_caps_the_threshold_at_max_tau_and_takes_the_larger_cluster():
    x, honest = planted("opposite")
    torch.testing.assert_close(ClippedClustering(2, max_tau=1.0)(x), clipped_mean_reference(x, honest, 1.0))
    tie = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
    assert ClippedClustering(0).select(tie).tolist() == [0, 1]   # equal sizes: the cluster of row 0


# ------------------------------------------------------------------ non-finite rows, purity, dtype
CASES = [("bulyan", 11, 2, {}), ("dnc", 10, 3, {}), ("dnc", 10, 3, {"b": 4}), ("signguard", 10, 3, {}),
         ("clippedclustering", 10, 3, {})]


@pytest.mark.parametrize("name, n, f, params", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_most_f_non_finite_rows_never_reach_the_output_and_inputs_stay_unchanged(name, n, f, params, dtype):
    """Bulyan and DnC (c = 1) promise it for at most f bad rows, SignGuard and ClippedClustering for fewer
    than n/2. A bad value sits outside DnC's few sampled coordinates too (b = 4)."""
    x = data(n, 30, dtype)
    bad = [1, 4, 7][:f]
    x[bad[0], 2] = NONFINITE[0]
    x[bad[1], 29] = NONFINITE[1]
    if f > 2:
        x[bad[2]] = NONFINITE[2]
    before = x.clone()
    rule = make_defense(name, f, **params)
    out = rule(x)
    assert out.dtype == dtype and out.shape == (30,) and torch.isfinite(out).all()
    assert not set(bad) & set(rule.rule.select(x).tolist())
    assert torch.equal(x.nan_to_num(), before.nan_to_num()) and torch.equal(x.isnan(), before.isnan())
    out.fill_(12345.0)                         # the output owns its memory
    assert torch.equal(x.nan_to_num(), before.nan_to_num())


@pytest.mark.parametrize("name", PEERS)
def test_rules_run_after_every_pre_aggregator(name):
    x = data(11, 20)
    for pre in (None, "nnm", "clipping", "arc", ["nnm", "arc"]):
        out = make_defense(name, 2, pre=pre)(x)
        assert out.shape == (20,) and torch.isfinite(out).all(), pre
    out = make_defense(name, 0, pre=("bucketing", {"s": 2})).with_generator(torch.Generator().manual_seed(1))(x)
    assert out.shape == (20,) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", PEERS)
def test_the_differentiable_path_has_finite_gradients_for_the_finite_rows(name):
    x = data(11, 8, torch.float64)
    x[3] = float("nan")
    leaf = x.clone().requires_grad_(True)
    out = make_defense(name, 2)(leaf)
    torch.testing.assert_close(out.detach(), make_defense(name, 2)(x), rtol=0, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(leaf.grad[torch.arange(11) != 3]).all()


def test_every_rule_is_invariant_to_row_order_up_to_its_ties():
    x = data(11, 16, torch.float64)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(2))
    for name in PEERS:
        defense = make_defense(name, 2)
        torch.testing.assert_close(defense(x[perm]), defense(x), rtol=0, atol=1e-10)


# ------------------------------------------------------------------ through the runner
@pytest.mark.parametrize("name, rule_class", [("dnc", DnC), ("signguard", SignGuard),
                                              ("clippedclustering", ClippedClustering)])
def test_rules_aggregate_both_channels_in_a_dsgd_run(monkeypatch, name, rule_class):
    generators = []
    original = getattr(rule_class, "with_generator", None)
    if original is not None:
        def spy(self, generator):
            generators.append(generator)
            return original(self, generator)
        monkeypatch.setattr(rule_class, "with_generator", spy)
    widths, fed = run_attacked(make_defense(name, F_BYZ), "dsgd", monkeypatch, rule_class)
    assert parameter_count(fed) in widths and len(widths) >= 2
    assert fed.non_finite() is None
    if original is not None:                  # the runner hands the step's generator to a randomized rule
        assert generators and all(isinstance(g, torch.Generator) for g in generators)
