"""byzbn.attacks: hand-computed rows, ALIE's z table, optimal attacks, registry, validation, BN stats.

The context, Gaussian noise across steps and runs, and plugin attacks are tested in test_attack_plugins.py.
"""
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from byzbn.attacks import (ATTACKS, FIELDS, Attack, AttackContext, alie_z, attack_parameters, attack_stats,
                           byzantine_rows, make_attack, register)
from byzbn.attacks.optimal import bracketed_line_search
from byzbn.defenses import functional
from byzbn.stats import ClientStats, merge_stats, robust_merge_stats

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]
FIXED = ["sign-flip", "foe", "alie", "gaussian", "nan", "inf"]
OPTIMAL = ["optimal-foe", "optimal-alie"]

# Three honest rows: mean [3, 4], std (ddof=1) [2, 2].
H3 = [[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]]


def h3(dtype=torch.float64, device="cpu"):
    return torch.tensor(H3, dtype=dtype, device=device)


def distance(defense, honest, rows):
    """‖D(cat(H, rows)) − mean(H)‖, the quantity the optimal attacks maximise."""
    return float(torch.linalg.vector_norm(defense(torch.cat([honest, rows])) - honest.mean(dim=0)))


def defenses_for(f):
    return {
        "mean": functional.mean,
        "median": functional.coordinate_median,
        "trimmed-mean": lambda x: functional.trimmed_mean(x, f),
        "nnm-median": lambda x: functional.coordinate_median(functional.nnm(x, f)),
        "nnm-trimmed-mean": lambda x: functional.trimmed_mean(functional.nnm(x, f), f),
    }


# ---------------------------------------------------------------- hand-computed rows

def test_sign_flip_is_minus_the_honest_mean():
    out = make_attack("sign-flip")(h3(), AttackContext(5, 2))
    assert torch.equal(out, torch.tensor([[-3.0, -4.0], [-3.0, -4.0]], dtype=torch.float64))


@pytest.mark.parametrize("eps, row", [(0.1, [-0.3, -0.4]), (-2.0, [6.0, 8.0]), (0.0, [0.0, 0.0])])
def test_foe_is_minus_eps_times_the_honest_mean(eps, row):
    out = make_attack("foe", eps=eps)(h3(), AttackContext(4, 1))
    torch.testing.assert_close(out, torch.tensor([row], dtype=torch.float64), rtol=0, atol=1e-15)


def test_foe_default_eps_is_0_1():
    assert make_attack("foe").eps == 0.1


def test_alie_with_explicit_z():
    # mean [3, 4] − 1.5 · std [2, 2]
    out = make_attack("alie", z=1.5)(h3(), AttackContext(6, 3))
    assert torch.equal(out, torch.tensor([[0.0, 1.0]] * 3, dtype=torch.float64))


def test_alie_default_z_uses_the_paper_formula():
    # honest mean [0, 1], std [1, 1]; n=5, f=2: s = 3 − 2 = 1, z = Φ⁻¹(4/5) = 0.8416212336
    honest = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    out = make_attack("alie")(honest, AttackContext(5, 2))
    expected = torch.tensor([[-0.8416212336, 0.1583787664]] * 2, dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_alie_single_honest_row_has_zero_std():
    out = make_attack("alie", z=3.0)(torch.tensor([[2.0, -1.0]]), AttackContext(2, 1))
    assert torch.equal(out, torch.tensor([[2.0, -1.0]]))


@pytest.mark.parametrize("n, f, z", [
    # z = Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − f, from a standard normal table
    (10, 2, 0.2533471031),    # Φ⁻¹(0.60)
    (10, 4, 0.8416212336),    # Φ⁻¹(0.80)
    (25, 5, 0.4676987991),    # Φ⁻¹(0.68)
    (50, 10, 0.4676987991),   # Φ⁻¹(0.68)
    (20, 0, -0.1256613469),   # Φ⁻¹(0.45)
    (7, 3, 1.0675705239),     # Φ⁻¹(6/7)
    (50, 20, 1.1749867921),   # Φ⁻¹(0.88)
    (4, 1, 0.0),              # Φ⁻¹(0.50)
])
def test_alie_z_table(n, f, z):
    assert alie_z(n, f) == pytest.approx(z, abs=1e-9)


@pytest.mark.parametrize("n, f", [(5, 3), (4, 3), (3, 2), (10, 6)])
def test_alie_default_z_needs_an_honest_majority(n, f):
    with pytest.raises(ValueError, match="pass z explicitly"):
        alie_z(n, f)
    honest = torch.zeros(n - f, 3)
    with pytest.raises(ValueError, match="pass z explicitly"):
        make_attack("alie")(honest, AttackContext(n, f))
    assert make_attack("alie", z=1.0)(honest, AttackContext(n, f)).shape == (f, 3)


def test_nan_and_inf_rows():
    nan_rows = make_attack("nan")(h3(), AttackContext(5, 2))
    inf_rows = make_attack("inf")(h3(), AttackContext(5, 2))
    assert nan_rows.shape == inf_rows.shape == (2, 2)
    assert torch.isnan(nan_rows).all()
    assert (inf_rows == math.inf).all()


# ---------------------------------------------------------------- gaussian

def test_gaussian_is_deterministic_and_seeded():
    honest = h3()
    a = make_attack("gaussian", seed=7)
    ctx = AttackContext(5, 2)  # no generator: the draw is derived from (seed, step, channel)
    assert torch.equal(a(honest, ctx), a(honest, AttackContext(5, 2)))
    assert torch.equal(a(honest, ctx), make_attack("gaussian", seed=7)(honest * 10, ctx))
    assert not torch.equal(a(honest, ctx), make_attack("gaussian", seed=8)(honest, ctx))


def test_gaussian_float32_is_the_float64_draw_rounded():
    a = make_attack("gaussian", mu=1.0, sigma=3.0, seed=3)
    out64 = a(h3(torch.float64), AttackContext(5, 2))
    out32 = a(h3(torch.float32), AttackContext(5, 2))
    assert torch.equal(out32, out64.float())


def test_gaussian_moments():
    out = make_attack("gaussian", mu=5.0, sigma=200.0, seed=0)(torch.zeros(1, 20000), AttackContext(2, 1))
    # standard errors: 200/√20000 ≈ 1.4 for the mean, 200/√40000 = 1 for the std
    assert abs(out.mean().item() - 5.0) < 6 * 1.42
    assert abs(out.std().item() - 200.0) < 6 * 1.0


def test_gaussian_sigma_zero_is_constant_mu():
    out = make_attack("gaussian", mu=-2.5, sigma=0.0)(h3(), AttackContext(5, 2))
    assert torch.equal(out, torch.full((2, 2), -2.5, dtype=torch.float64))


# ---------------------------------------------------------------- optimal attacks

def test_optimal_foe_against_the_mean_goes_to_max_scale():
    # mean defense: D − m = −(2 + 2ε)/5 · m with ‖m‖ = 5, so the distance is 2|1 + ε|, largest at ε = +100
    a = make_attack("optimal-foe")
    scale, dist = a.search(h3(), AttackContext(5, 2, functional.mean))
    assert scale == pytest.approx(100.0, rel=1e-12)
    assert dist == pytest.approx(202.0, rel=1e-12)
    torch.testing.assert_close(a(h3(), AttackContext(5, 2, functional.mean)),
                               torch.tensor([[-300.0, -400.0]] * 2, dtype=torch.float64))


def test_optimal_foe_searches_negative_scales():
    # A defense that drops negative values: positive ε gives negative rows (distance 2); negative ε gives
    # |ε|·m, distance 2|ε| − 2, largest at ε = −100.
    def relu_mean(x):
        return x.clamp(min=0).mean(dim=0)

    scale, dist = make_attack("optimal-foe").search(h3(), AttackContext(5, 2, relu_mean))
    assert scale == pytest.approx(-100.0, rel=1e-12)
    assert dist == pytest.approx(198.0, rel=1e-12)


@pytest.mark.parametrize("n, f", [(7, 2), (10, 3), (11, 5)])
@pytest.mark.parametrize("defense_name", ["mean", "median", "trimmed-mean", "nnm-median", "nnm-trimmed-mean"])
@pytest.mark.parametrize("fixed, optimal", [("foe", "optimal-foe"), ("alie", "optimal-alie")])
def test_optimal_moves_the_aggregate_at_least_as_far_as_the_fixed_attack(n, f, defense_name, fixed, optimal):
    gen = torch.Generator().manual_seed(n * 100 + f)
    honest = torch.randn(n - f, 4, generator=gen, dtype=torch.float64) + torch.randn(4, generator=gen,
                                                                                      dtype=torch.float64)
    defense = defenses_for(f)[defense_name]
    fixed_rows = make_attack(fixed)(honest, AttackContext(n, f))
    optimal_rows = make_attack(optimal)(honest, AttackContext(n, f, defense))
    assert distance(defense, honest, optimal_rows) >= distance(defense, honest, fixed_rows) - 1e-12


@pytest.mark.parametrize("defense_name", ["median", "trimmed-mean"])
def test_optimal_alie_beats_the_paper_z(defense_name):
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(20, 5, generator=gen, dtype=torch.float64) + 1.0
    defense = defenses_for(5)[defense_name]
    fixed = distance(defense, honest, make_attack("alie")(honest, AttackContext(25, 5)))
    best = distance(defense, honest, make_attack("optimal-alie")(honest, AttackContext(25, 5, defense)))
    assert best > 1.05 * fixed


@pytest.mark.parametrize("defense_name", ["mean", "median", "trimmed-mean"])
@pytest.mark.parametrize("optimal", OPTIMAL)
def test_optimal_matches_a_dense_scan(defense_name, optimal):
    gen = torch.Generator().manual_seed(1)
    honest = torch.randn(7, 3, generator=gen, dtype=torch.float64) * 2 + 0.5
    defense = defenses_for(3)[defense_name]
    attack = make_attack(optimal)
    _, found = attack.search(honest, AttackContext(10, 3, defense))
    scan = max(attack.distance(honest, AttackContext(10, 3, defense), -100 + 0.25 * k) for k in range(801))
    assert found >= scan * (1 - 1e-9)


def test_optimal_rows_are_identical_and_achieve_the_reported_distance():
    gen = torch.Generator().manual_seed(2)
    honest = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    defense = defenses_for(3)["nnm-median"]
    attack = make_attack("optimal-alie")
    scale, dist = attack.search(honest, AttackContext(9, 3, defense))
    rows = attack(honest, AttackContext(9, 3, defense))
    assert torch.equal(rows, rows[:1].expand(3, -1))
    assert distance(defense, honest, rows) == pytest.approx(dist, rel=1e-12)


@pytest.mark.parametrize("fixed, optimal", [("foe", "optimal-foe"), ("alie", "optimal-alie")])
def test_optimal_never_does_worse_than_the_classical_scale(fixed, optimal):
    honest = h3()
    classical_row = make_attack(fixed)(honest, AttackContext(5, 2))[0]

    def picky(x):  # moves only for Byzantine rows at the classical point, which grid=6 does not visit
        hit = torch.allclose(x[-1], classical_row, rtol=0, atol=1e-12)
        return x[:3].mean(dim=0) + (10.0 if hit else 0.0)

    rows = make_attack(optimal, grid=6)(honest, AttackContext(5, 2, picky))
    assert torch.equal(rows, classical_row.expand(2, -1))


def test_line_search_refines_inside_the_bracket():
    assert bracketed_line_search(lambda t: -(t - 0.37) ** 2, [], min_scale=0.01, max_scale=100.0, grid=17,
                                 iters=30)[0] == pytest.approx(0.37, abs=1e-6)


@given(st.floats(-90.0, 90.0))
def test_line_search_finds_the_peak_of_a_concave_objective(peak):
    scale, _ = bracketed_line_search(lambda t: -abs(t - peak), [], min_scale=0.01, max_scale=100.0, grid=17,
                                     iters=30)
    assert scale == pytest.approx(peak, abs=2e-5 * max(abs(peak), 0.01))


def test_line_search_extra_brackets_find_a_narrow_higher_peak():
    # A broad hump at t = 1 (height 1) and a narrow spike at t = 4.5 (height 2) that no grid point sees.
    def objective(t):
        return max(1.0 - 0.3 * abs(t - 1.0), 2.0 - abs(t - 4.5), 0.0)

    kw = dict(min_scale=0.01, max_scale=100.0, grid=17, iters=40)
    assert bracketed_line_search(objective, [], brackets=1, **kw) == pytest.approx((1.0, 1.0), abs=1e-6)
    assert bracketed_line_search(objective, [], brackets=2, **kw) == pytest.approx((4.5, 2.0), abs=1e-6)


@pytest.mark.parametrize("optimal", OPTIMAL)
def test_optimal_needs_a_defense(optimal):
    with pytest.raises(ValueError, match="needs defense"):
        make_attack(optimal)(h3(), AttackContext(5, 2))


def test_optimal_rejects_a_defense_with_the_wrong_output_shape():
    with pytest.raises(ValueError, match="shape"):
        make_attack("optimal-foe")(h3(), AttackContext(5, 2, lambda x: x))


# ---------------------------------------------------------------- registry

def test_registry_holds_every_rule():
    assert sorted(ATTACKS) == sorted(FIXED + OPTIMAL + ["mimic", "bn-adaptive", "label-flip", "minmax", "minsum",
                                                        "fang-trimmed", "fang-krum"])
    for name, cls in ATTACKS.items():
        assert issubclass(cls, Attack) and cls.name == name


def test_unknown_attack_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown attack 'sign_flip'.*'alie'.*'sign-flip'"):
        make_attack("sign_flip")


def test_unknown_parameter_lists_the_valid_parameters():
    with pytest.raises(ValueError, match=r"unknown parameter.*'epsilon'.*foe.*\['eps'\]"):
        make_attack("foe", epsilon=0.2)
    with pytest.raises(ValueError, match=r"valid parameters are \[\]"):
        make_attack("sign-flip", eps=1.0)


def test_attack_parameters():
    assert attack_parameters("foe") == ["eps"]
    assert attack_parameters("gaussian") == ["mu", "sigma", "seed"]
    assert attack_parameters("optimal-alie") == ["min_scale", "max_scale", "grid", "iters", "brackets"]


def test_register_rejects_duplicates_and_non_attacks():
    with pytest.raises(ValueError, match="already registered"):
        register("foe")(type("Other", (Attack,), {"rows": lambda self, *a: None}))
    with pytest.raises(ValueError, match="Attack subclass"):
        register("not-an-attack")(object)
    assert "not-an-attack" not in ATTACKS


@pytest.mark.parametrize("name", FIXED + OPTIMAL)
def test_repr_rebuilds_the_same_attack(name):
    a = make_attack(name)
    assert eval(repr(a), {"make_attack": make_attack}).params() == a.params()


@pytest.mark.parametrize("name, params, match", [
    ("foe", {"eps": float("nan")}, "eps must be a finite float"),
    ("foe", {"eps": float("inf")}, "eps must be a finite float"),
    ("foe", {"eps": "0.1"}, "eps must be a finite float"),
    ("foe", {"eps": True}, "eps must be a finite float"),
    ("alie", {"z": float("-inf")}, "z must be a finite float"),
    ("gaussian", {"sigma": -1.0}, "sigma must be >= 0"),
    ("gaussian", {"mu": float("nan")}, "mu must be a finite float"),
    ("gaussian", {"seed": -1}, "seed=-1 is out of range"),
    ("gaussian", {"seed": 1.5}, "seed must be an int"),
    ("optimal-foe", {"min_scale": 0.0}, "0 < min_scale < max_scale"),
    ("optimal-foe", {"max_scale": 0.001}, "0 < min_scale < max_scale"),
    ("optimal-alie", {"grid": 1}, "grid=1 is out of range"),
    ("optimal-alie", {"iters": -1}, "iters=-1 is out of range"),
    ("optimal-alie", {"brackets": 0}, "brackets=0 is out of range"),
])
def test_bad_parameter_values(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_attack(name, **params)


# ---------------------------------------------------------------- call validation and contract

@pytest.mark.parametrize("name", FIXED + OPTIMAL)
@pytest.mark.parametrize("honest, n, f, match", [
    (torch.zeros(3), 5, 2, "honest must have shape"),
    (torch.zeros(0, 2), 2, 2, "honest must have shape"),
    ([[1.0, 2.0]], 2, 1, "honest must be a torch.Tensor"),
    (torch.zeros(3, 2, dtype=torch.int64), 5, 2, "honest must have dtype"),
    (torch.zeros(3, 2, dtype=torch.float16), 5, 2, "honest must have dtype"),
    (torch.zeros(3, 2), 6, 2, "honest must have n - f = 6 - 2 = 4 rows, got 3"),
    (torch.zeros(3, 2), 5, -1, "f=-1 is out of range"),
    (torch.zeros(3, 2), 2, 3, "f=3 is out of range"),
    (torch.zeros(3, 2), 5.0, 2, "n must be an int"),
])
def test_call_validation(name, honest, n, f, match):
    with pytest.raises(ValueError, match=match):
        make_attack(name)(honest, AttackContext(n, f, functional.mean))


def test_defense_must_be_callable():
    with pytest.raises(ValueError, match="defense must be None or a callable"):
        make_attack("foe")(h3(), AttackContext(5, 2, defense="median"))


@pytest.mark.parametrize("name", FIXED + OPTIMAL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_contract_shape_dtype_device_purity(name, dtype, device):
    honest = h3(dtype, device)
    before = honest.clone()
    attack = make_attack(name)
    out = attack(honest, AttackContext(5, 2, functional.coordinate_median))
    assert out.shape == (2, 2) and out.dtype == dtype and out.device == honest.device
    assert torch.equal(honest, before)
    exact = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out, attack(honest, AttackContext(5, 2, functional.coordinate_median)), **exact)
    if name != "gaussian":
        torch.testing.assert_close(out, out[:1].expand(2, -1), **exact)


@pytest.mark.parametrize("name", FIXED + OPTIMAL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_f_zero_gives_an_empty_block(name, dtype):
    out = make_attack(name)(h3(dtype), AttackContext(3, 0, functional.mean))
    assert out.shape == (0, 2) and out.dtype == dtype


# ---------------------------------------------------------------- hypothesis: the closed forms

honest_matrices = st.integers(1, 6).flatmap(lambda h: st.integers(1, 4).flatmap(lambda d: st.lists(
    st.lists(st.floats(-1e3, 1e3), min_size=d, max_size=d), min_size=h, max_size=h)))


@given(honest_matrices, st.integers(0, 5), st.floats(-10.0, 10.0))
def test_foe_and_sign_flip_closed_forms(rows, f, eps):
    honest = torch.tensor(rows, dtype=torch.float64)
    n = honest.shape[0] + f
    m = honest.mean(dim=0)
    torch.testing.assert_close(make_attack("foe", eps=eps)(honest, AttackContext(n, f)), (-eps * m).expand(f, -1))
    flipped = make_attack("sign-flip")(honest, AttackContext(n, f))
    # the mean of the full submission shrinks to (h − f)/n of the honest mean
    torch.testing.assert_close(torch.cat([honest, flipped]).mean(dim=0), (honest.shape[0] - f) / n * m,
                               atol=1e-9, rtol=1e-9)


@given(honest_matrices, st.integers(1, 5), st.floats(-5.0, 5.0))
def test_alie_rows_sit_z_stds_below_the_mean(rows, f, z):
    honest = torch.tensor(rows, dtype=torch.float64)
    out = make_attack("alie", z=z)(honest, AttackContext(honest.shape[0] + f, f))
    std = honest.std(dim=0) if honest.shape[0] > 1 else torch.zeros(honest.shape[1], dtype=torch.float64)
    torch.testing.assert_close(honest.mean(dim=0) - out[0], z * std, atol=1e-9, rtol=1e-9)


@settings(max_examples=40)  # each example runs two line searches (~100 defense calls each)
@given(honest_matrices, st.integers(1, 3), st.sampled_from(["median", "trimmed-mean"]),
       st.sampled_from([("foe", "optimal-foe"), ("alie", "optimal-alie")]))
def test_optimal_beats_fixed_on_random_inputs(rows, f, defense_name, pair):
    honest = torch.tensor(rows, dtype=torch.float64)
    f = min(f, honest.shape[0] - 1)  # 2f < n for trimmed mean
    assume(f >= 1)
    n = honest.shape[0] + f
    defense = defenses_for(f)[defense_name]
    fixed = make_attack(pair[0], **({"z": 1.0} if pair[0] == "alie" else {}))
    optimal = make_attack(pair[1])
    assert (distance(defense, honest, optimal(honest, AttackContext(n, f, defense)))
            >= distance(defense, honest, fixed(honest, AttackContext(n, f))) - 1e-9)


# ---------------------------------------------------------------- BN statistics submission

def stats3():
    # means as H3; variances [[1, 4], [2, 2], [3, 9]] (mean [2, 5], std [1, √13]); counts median 20
    return ClientStats(mean=h3(), var=torch.tensor([[1.0, 4.0], [2.0, 2.0], [3.0, 9.0]], dtype=torch.float64),
                       count=torch.tensor([10, 30, 20]))


@pytest.mark.parametrize("fields, mean_row, var_row", [
    ("mean", [-3.0, -4.0], [14.0 / 3.0, 23.0 / 3.0]),  # no-op var: mean_i v_i + (μ_i − μ̄)²
    ("var", [3.0, 4.0], [-2.0, -5.0]),
    ("both", [-3.0, -4.0], [-2.0, -5.0]),
])
def test_attack_stats_fields(fields, mean_row, var_row):
    honest = stats3()
    out = attack_stats(honest, make_attack("sign-flip"), AttackContext(5, 2), fields=fields)
    assert out.n == 5
    assert torch.equal(out.mean, torch.tensor(H3 + [mean_row] * 2, dtype=torch.float64))
    assert torch.equal(out.var[:3], honest.var)
    torch.testing.assert_close(out.var[3:], torch.tensor([var_row] * 2, dtype=torch.float64))
    assert torch.equal(out.count, torch.tensor([10, 30, 20, 20, 20]))


def test_attack_stats_attacks_each_field_from_its_own_rows():
    out = attack_stats(stats3(), make_attack("alie", z=1.0), AttackContext(5, 2), fields="var")
    torch.testing.assert_close(out.var[3:], torch.tensor([[1.0, 5.0 - math.sqrt(13.0)]] * 2, dtype=torch.float64))
    assert torch.equal(out.mean[3:], torch.tensor([[3.0, 4.0]] * 2, dtype=torch.float64))


def test_attack_stats_without_attack_submits_the_honest_union_or_the_row_mean():
    out = attack_stats(stats3(), None, AttackContext(5, 2))
    assert torch.equal(out.mean[3:], torch.tensor([[3.0, 4.0]] * 2, dtype=torch.float64))
    # (μ − μ̄)² = [[4, 4], [0, 4], [4, 0]]; v + that = [[5, 8], [2, 6], [7, 9]] -> mean [14/3, 23/3]
    torch.testing.assert_close(out.var[3:], torch.tensor([[14.0 / 3.0, 23.0 / 3.0]] * 2, dtype=torch.float64))
    rowwise = attack_stats(stats3(), None, AttackContext(5, 2), noop="mean")
    assert torch.equal(rowwise.var[3:], torch.tensor([[2.0, 5.0]] * 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"noop must be one of \['union', 'mean'\]"):
        attack_stats(stats3(), None, AttackContext(5, 2), noop="median")


@given(honest_matrices, st.integers(0, 4))
def test_union_noop_leaves_the_mean_merge_of_the_honest_clients_unchanged(rows, f):
    mean = torch.tensor(rows, dtype=torch.float64)
    honest = ClientStats(mean=mean, var=mean.abs() + 1.0, count=torch.full((mean.shape[0],), 7))
    merged_honest = merge_stats(honest)
    merged_all = robust_merge_stats(attack_stats(honest, None, AttackContext(mean.shape[0] + f, f)), functional.mean)
    torch.testing.assert_close(merged_all.mean, merged_honest.mean)
    torch.testing.assert_close(merged_all.var, merged_honest.var)


def test_attack_stats_even_count_median_is_the_lower_middle():
    honest = ClientStats(mean=torch.zeros(4, 1), var=torch.ones(4, 1), count=torch.tensor([40, 10, 30, 20]))
    assert attack_stats(honest, None, AttackContext(5, 1)).count.tolist() == [40, 10, 30, 20, 20]


def test_attack_stats_passes_the_defense_to_optimal_attacks():
    honest = stats3()
    attack = make_attack("optimal-foe")
    out = attack_stats(honest, attack, AttackContext(5, 2, functional.coordinate_median), fields="mean")
    assert torch.equal(out.mean[3:], attack(honest.mean, AttackContext(5, 2, functional.coordinate_median)))
    with pytest.raises(ValueError, match="needs defense"):
        attack_stats(honest, attack, AttackContext(5, 2))


def test_attack_stats_does_not_mutate_and_f_zero_is_the_honest_submission():
    honest = stats3()
    copies = [t.clone() for t in (honest.mean, honest.var, honest.count)]
    out = attack_stats(honest, make_attack("foe"), AttackContext(3, 0))
    attack_stats(honest, make_attack("sign-flip"), AttackContext(5, 2))
    for t, c in zip((honest.mean, honest.var, honest.count), copies):
        assert torch.equal(t, c)
    assert torch.equal(out.mean, honest.mean) and torch.equal(out.var, honest.var)
    assert torch.equal(out.count, honest.count)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fields="variance"), r"fields must be one of \['mean', 'var', 'both'\]"),
    (dict(context=AttackContext(6, 2)), "n - f = 6 - 2 = 4 rows, got 3"),
    (dict(attack="sign-flip"), "attack must be None"),
])
def test_attack_stats_validation(kwargs, match):
    args = dict(honest=stats3(), attack=make_attack("sign-flip"), context=AttackContext(5, 2)) | kwargs
    with pytest.raises(ValueError, match=match):
        attack_stats(**args)
    with pytest.raises(ValueError, match="must be a byzbn.stats.ClientStats"):
        attack_stats(h3(), None, AttackContext(5, 2))
    assert FIELDS == ("mean", "var", "both")


def test_byzantine_rows():
    honest = h3()
    assert torch.equal(byzantine_rows(honest, None, AttackContext(5, 2)),
                       torch.tensor([[3.0, 4.0]] * 2, dtype=torch.float64))
    assert torch.equal(byzantine_rows(honest, make_attack("sign-flip"), AttackContext(5, 2)),
                       torch.tensor([[-3.0, -4.0]] * 2, dtype=torch.float64))
    assert byzantine_rows(honest, None, AttackContext(3, 0)).shape == (0, 2)
    with pytest.raises(ValueError, match="n - f = 6 - 2"):
        byzantine_rows(honest, None, AttackContext(6, 2))
    with pytest.raises(ValueError, match="attack must be None"):
        byzantine_rows(honest, 3, AttackContext(5, 2))


@given(honest_matrices, st.integers(0, 4), st.sampled_from(FIELDS), st.sampled_from(["sign-flip", "alie", None]))
def test_attack_stats_layout(rows, f, fields, name):
    mean = torch.tensor(rows, dtype=torch.float64)
    honest = ClientStats(mean=mean, var=mean.abs(), count=torch.arange(1, mean.shape[0] + 1))
    n = mean.shape[0] + f
    attack = None if name is None else make_attack(name, **({"z": 0.5} if name == "alie" else {}))
    out = attack_stats(honest, attack, AttackContext(n, f), fields=fields, noop="mean")
    assert torch.equal(out.mean[: n - f], honest.mean) and torch.equal(out.var[: n - f], honest.var)
    mean_attack = attack if fields in ("mean", "both") else None
    var_attack = attack if fields in ("var", "both") else None
    assert torch.equal(out.mean[n - f:], byzantine_rows(honest.mean, mean_attack, AttackContext(n, f)))
    assert torch.equal(out.var[n - f:], byzantine_rows(honest.var, var_attack, AttackContext(n, f)))
    assert (out.count[n - f:] == honest.count.median()).all()
