"""byzbn.defenses: the registries, make_defense, validation, and labelled edge cases of the rules.

The hypothesis properties of the rules live in test_defense_properties.py; plugin rules and
pre-aggregators (the extension point) in test_defense_plugins.py.
"""
from __future__ import annotations

import re

import pytest
import torch

import byzbn.kernels
from byzbn.defenses import (AGGREGATORS, DEFENSES, PRE_AGGREGATORS, Aggregator, Defense, NearestNeighbourMixing,
                            PreAggregator, functional, make_defense, register_aggregator, register_pre_aggregator)

# Averaging rules against a float64 reference: one tolerance per dtype (relative to max |x|).
TOL = {torch.float32: 1e-6, torch.float64: 1e-14}
DTYPES = list(TOL)
ROBUST = ("median", "trimmed-mean")
PRES = (None, "nnm")
NAN, INF = float("nan"), float("inf")




def reference(x64: torch.Tensor, name: str, f: int, pre: str | None) -> torch.Tensor:
    """The composition of the functional references, applied in float64."""
    if pre == "nnm":
        x64 = functional.nnm(x64, f)
    if name == "mean":
        return functional.mean(x64)
    if name == "median":
        return functional.coordinate_median(x64)
    return functional.trimmed_mean(x64, f)


# ---- registries and construction ---------------------------------------------------------------------

CATALOGUE = {"mean", "median", "trimmed-mean", "geomed", "krum", "multi-krum", "centered-clipping", "mda", "monna",
             "meamed", "caf", "smea", "bulyan", "dnc", "signguard", "clippedclustering"}
PAPER_RULES = ("mean", "median", "trimmed-mean")  # the FBN paper's: no parameters, the fused kernel's rules


def test_registries_hold_the_rules_of_the_paper():
    assert DEFENSES is AGGREGATORS  # the old name still works
    assert set(DEFENSES) == CATALOGUE
    assert set(PRE_AGGREGATORS) == {"nnm", "bucketing", "clipping", "arc"}
    assert all(issubclass(cls, Aggregator) and cls.name == name for name, cls in DEFENSES.items())
    assert PRE_AGGREGATORS["nnm"] is NearestNeighbourMixing and issubclass(NearestNeighbourMixing, PreAggregator)


def test_registering_a_taken_name_raises_and_keeps_the_registry():
    before = dict(DEFENSES), dict(PRE_AGGREGATORS)

    class Impostor(Aggregator):
        def __call__(self, x):
            return x[0]

    class ImpostorPre(NearestNeighbourMixing):
        pass

    with pytest.raises(ValueError, match="'median' is already registered"):
        register_aggregator("median")(Impostor)
    with pytest.raises(ValueError, match="'nnm' is already registered"):
        register_pre_aggregator("nnm")(ImpostorPre)
    assert (DEFENSES, PRE_AGGREGATORS) == before


@pytest.mark.parametrize("name", PAPER_RULES)
@pytest.mark.parametrize("pre", PRES)
def test_make_defense_sets_name_f_pre_and_repr(name, pre):
    d = make_defense(name, 2, pre=pre)
    assert isinstance(d, Defense) and type(d.rule) is DEFENSES[name]
    assert (d.name, d.f, d.pre) == (name, 2, () if pre is None else (pre,))
    assert repr(d) == ("nnm∘" if pre else "") + f"{name}(f=2)"


def test_make_defense_defaults_to_no_pre_aggregator():
    # The default was pre="nnm" before pre-aggregators became a sequence; callers now say so.
    assert repr(make_defense("median", 2)) == "median(f=2)"
    assert repr(make_defense("median", 2, pre="nnm")) == "nnm∘median(f=2)"
    assert repr(make_defense("trimmed-mean", 1, pre=None)) == "trimmed-mean(f=1)"
    assert repr(NearestNeighbourMixing(3)) == "nnm(f=3)"


def test_declared_parameters_take_their_defaults_and_show_in_repr():
    class Damped(Aggregator):
        def __init__(self, f, scale=1.0):
            super().__init__(f)
            self.scale = scale

        def __call__(self, x):
            return self.scale * x.mean(dim=0)

    register_aggregator("test-damped")(Damped)
    try:
        assert make_defense("test-damped", 1).params == {"scale": 1.0}
        assert repr(make_defense("test-damped", 1, pre="nnm", scale=0.5)) == "nnm∘test-damped(f=1, scale=0.5)"
        with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] for aggregator 'test-damped': "
                                             r"valid parameters are \['scale'\]"):
            make_defense("test-damped", 1, beta=2)
    finally:
        del AGGREGATORS["test-damped"]


def test_unknown_names_and_parameters_list_the_valid_ones():
    valid = ", ".join(repr(name) for name in sorted(CATALOGUE))
    with pytest.raises(ValueError, match=re.escape(f"unknown aggregator 'krumm': valid aggregators are [{valid}]")):
        make_defense("krumm", 1)
    with pytest.raises(ValueError, match=r"pre must be None or one of \['arc', 'bucketing', 'clipping', 'nnm'\] "
                                         r".*got 'bucket'"):
        make_defense("median", 1, pre="bucket")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] for aggregator 'trimmed-mean': "
                                         r"valid parameters are \[\]"):
        make_defense("trimmed-mean", 1, beta=0.1)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['k'\] for pre-aggregator 'nnm'"):
        make_defense("median", 1, pre=("nnm", {"k": 3}))


@pytest.mark.parametrize("f", [-1, 1.0, True, "1", None], ids=["negative", "float", "bool", "str", "none"])
@pytest.mark.parametrize("build", [lambda f: make_defense("median", f), lambda f: NearestNeighbourMixing(f)],
                         ids=["defense", "nnm"])
def test_f_must_be_a_non_negative_int_at_construction(build, f):
    with pytest.raises(ValueError, match="^f"):
        build(f)


@pytest.mark.parametrize("name, pre, n, f, match", [
    ("trimmed-mean", None, 4, 2, r"f=2 is out of range for trimmed-mean with n=4: valid 0 <= f <= 1"),
    ("trimmed-mean", "nnm", 5, 3, r"f=3 is out of range for trimmed-mean with n=5: valid 0 <= f <= 2"),
    ("median", None, 4, 2, r"f=2 is out of range for median with n=4: valid 0 <= f <= 1"),
    ("median", "nnm", 1, 1, r"f=1 is out of range for median with n=1: valid 0 <= f <= 0"),
    ("mean", "nnm", 3, 3, r"f=3 is out of range for nnm with n=3: valid 0 <= f <= 2"),
    ("mean", None, 3, 4, r"f=4 is out of range with n=3: valid 0 <= f <= 3"),
], ids=["tm-2f=n", "nnm-tm-2f>n", "median-f=n/2", "nnm-median-n=1", "nnm-f=n", "mean-f>n"])
def test_bounds_that_need_n_are_checked_at_call_time(name, pre, n, f, match):
    d = make_defense(name, f, pre=pre)  # fine without n
    with pytest.raises(ValueError, match=match):
        d(torch.zeros(n, 3))
    with pytest.raises(ValueError, match=match):
        d.check_n(n)


def test_nnm_alone_checks_n_minus_f_at_call_time():
    with pytest.raises(ValueError, match=r"f=2 is out of range for nnm with n=2"):
        NearestNeighbourMixing(2)(torch.zeros(2, 3))


@pytest.mark.parametrize("x, match", [
    ([[1.0, 2.0]], r"x must be a torch.Tensor of shape \[n, d\], got list"),
    (torch.zeros(3), r"x must have shape \[n, d\]"),
    (torch.zeros(3, 2, 2), r"x must have shape \[n, d\]"),
    (torch.zeros(0, 2), r"x must have shape \[n, d\] with n >= 1"),
    (torch.zeros(3, 0), r"x must have shape \[n, d\] with n >= 1 and d >= 1"),
    (torch.zeros(3, 2, dtype=torch.int64), r"x must have dtype in \['torch.float32', 'torch.float64'\]"),
    (torch.zeros(3, 2, dtype=torch.float16), r"x must have dtype in"),
], ids=["non-tensor", "1-d", "3-d", "no-rows", "no-columns", "int-dtype", "float16"])
@pytest.mark.parametrize("pre", PRES)
@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_bad_submission_matrices_raise_naming_x(name, pre, x, match):
    with pytest.raises(ValueError, match=match):
        make_defense(name, 0, pre=pre)(x)


def test_call_delegates_to_the_kernel_dispatch(monkeypatch):
    calls = []

    def spy(x, f, rule, nnm=True, backend="auto"):
        calls.append((x, f, rule, nnm))
        return x[0]

    monkeypatch.setattr(byzbn.kernels, "robust_aggregate", spy)
    x = torch.randn(5, 3)
    make_defense("median", 2, pre="nnm")(x)
    make_defense("trimmed-mean", 1, pre=None)(x)
    assert [(c[1], c[2], c[3]) for c in calls] == [(2, "median", True), (1, "trimmed-mean", False)]
    assert all(c[0] is x for c in calls)


# ---- labelled edge cases -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pre", PRES)
@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_single_row_with_f0_returns_that_row(name, pre, dtype):
    x = torch.tensor([[1.5, -2.0, 1e-3, 7.0]], dtype=dtype)
    out = make_defense(name, 0, pre=pre)(x)
    assert out.dtype == dtype and torch.equal(out, x[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pre", PRES)
@pytest.mark.parametrize("n", [3, 5, 8, 9])
def test_trimmed_mean_at_2f_equal_n_minus_1_is_the_median(n, pre, dtype):
    f = (n - 1) // 2
    x = torch.randn(n, 7, dtype=torch.float64).to(dtype)
    tm, med = make_defense("trimmed-mean", f, pre=pre)(x), make_defense("median", f, pre=pre)(x)
    if n % 2:  # one value survives the trim: the median itself
        assert torch.equal(tm, med)
    else:  # two middle values survive: their mean, up to the rounding of 0.5·(a + b) vs (a + b)/2
        torch.testing.assert_close(tm, med, rtol=0, atol=TOL[dtype] * float(x.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 3, 7, 33, 100, 1000, 1025])
@pytest.mark.parametrize("name, pre, f", [
    ("mean", None, 0), ("mean", "nnm", 3), ("median", None, 3), ("median", "nnm", 3),
    ("trimmed-mean", None, 2), ("trimmed-mean", "nnm", 3), ("median", None, 0), ("trimmed-mean", "nnm", 0),
])
def test_non_power_of_two_widths_match_the_float64_reference(name, pre, f, d, dtype):
    gen = torch.Generator().manual_seed(d)
    x64 = torch.randn(7, d, generator=gen, dtype=torch.float64)
    x64[2] += 50.0  # one far row, so NNM's neighbour sets are the same in both precisions
    x = x64.to(dtype)
    out = make_defense(name, f, pre=pre)(x)
    expected = reference(x.to(torch.float64), name, f, pre)
    assert out.shape == (d,) and out.dtype == dtype
    if name == "median" and pre is None:  # odd n: a selection, exact in any precision
        assert torch.equal(out.to(torch.float64), expected)
    else:
        torch.testing.assert_close(out.to(torch.float64), expected, rtol=0, atol=8 * TOL[dtype] * float(x64.abs().max()))


@pytest.mark.parametrize("pre", PRES)
@pytest.mark.parametrize("name", ROBUST)
@pytest.mark.parametrize("byzantine", [[NAN] * 3, [INF] * 3, [-INF] * 3, [NAN, -INF, INF], [1e30, -1e30, NAN]],
                         ids=["nan", "inf", "-inf", "mixed", "huge"])
def test_f_non_finite_rows_never_reach_the_output(name, pre, byzantine):
    honest = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.5, 2.5], [0.5, 1.2, 2.2]])
    x = torch.cat([honest[:1], torch.tensor([byzantine, byzantine[::-1]]), honest[1:]])
    out = make_defense(name, 2, pre=pre)(x)
    assert torch.isfinite(out).all()
    assert (out >= honest.amin(0) - 1e-6).all() and (out <= honest.amax(0) + 1e-6).all()


def test_median_sorts_nan_above_inf_and_mean_propagates_it():
    x = torch.tensor([[NAN], [INF], [1.0], [-INF], [2.0]])
    assert make_defense("median", 2, pre=None)(x).item() == 2.0  # sorted: -inf 1 2 inf nan
    assert make_defense("trimmed-mean", 2, pre=None)(x).item() == 2.0
    assert make_defense("median", 0, pre=None)(torch.tensor([[-INF], [INF]])).isnan().item()
    assert make_defense("mean", 0, pre=None)(x).isnan().item()


def test_nnm_mixes_each_row_with_its_nearest_and_breaks_ties_by_the_lower_index():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    mixed = NearestNeighbourMixing(2)(x)
    # row 1 is equally far from rows 0 and 2: the tie goes to row 0.
    assert mixed.squeeze(1).tolist() == [0.5, 0.5, 1.5, 6.0]
    assert make_defense("mean", 2, pre="nnm")(x).item() == pytest.approx(8.5 / 4)


def test_counterexample_nnm_median_can_leave_the_honest_range_for_a_moderate_byzantine_row():
    """Why the NNM containment property only draws far outliers (test_defense_properties.py).

    n=3, f=1, honest rows {0, 1}, Byzantine row 1.4. NNM mixes each row with its n−f = 2 nearest:
    0 → (0+1)/2 = 0.5, 1 → (1+1.4)/2 = 1.2, 1.4 → (1.4+1)/2 = 1.2, so NNM∘median = 1.2 > 1 = the
    honest maximum. The Byzantine row is closer to an honest row than the honest rows are to each
    other, so it pulls that honest row's mix out. Plain median stays inside: median{0, 1, 1.4} = 1.
    """
    x = torch.tensor([[0.0], [1.0], [1.4]], dtype=torch.float64)
    assert make_defense("median", 1, pre="nnm")(x).item() == pytest.approx(1.2, abs=1e-15)
    assert make_defense("median", 1, pre=None)(x).item() == 1.0
