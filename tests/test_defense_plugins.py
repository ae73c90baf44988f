"""byzbn.defenses as an extension point: registered rules and pre-aggregators are what a Defense runs.

A defense is pre-aggregators (in order) ∘ rule; the fused kernel is only a fast path for
(no pre | [nnm]) ∘ (mean | median | trimmed-mean) with the built-in classes.
"""
from __future__ import annotations

import pytest
import torch

import byzbn.kernels
from byzbn.defenses import (AGGREGATORS, PRE_AGGREGATORS, Aggregator, CoordinateMedian, PreAggregator, functional,
                            aggregator_parameters, make_defense, pre_aggregator_parameters, register_aggregator,
                            register_pre_aggregator)
from byzbn.defenses.defense import pre_stages


@pytest.fixture
def plugins():
    """Register test plugins; everything a test registers is removed afterwards."""
    before = set(AGGREGATORS), set(PRE_AGGREGATORS)
    calls = []

    @register_aggregator("test-first-row")
    class FirstRow:  # duck-typed: no base class, no check_n
        def __init__(self, f, offset=0.0):
            self.f, self.offset = f, offset

        def __call__(self, x):
            calls.append(("test-first-row", x.clone()))
            return x[0] + self.offset

    @register_pre_aggregator("test-drop-last")
    class DropLast(PreAggregator):  # [n, d] -> [n − k, d]: declares its output rows and its bound
        def __init__(self, f, k=1):
            super().__init__(f)
            self.k = k

        def check_n(self, n):
            if n - self.k < 1:
                raise ValueError(f"f={self.f}: test-drop-last needs n > k={self.k}, got n={n}")

        def output_rows(self, n):
            return n - self.k

        def __call__(self, x):
            calls.append(("test-drop-last", x.clone()))
            return x[: x.shape[0] - self.k]

    @register_pre_aggregator("test-double")
    class Double(PreAggregator):
        def __call__(self, x):
            calls.append(("test-double", x.clone()))
            return 2 * x

    yield calls
    for registry, names in zip((AGGREGATORS, PRE_AGGREGATORS), before):
        for name in set(registry) - names:
            del registry[name]


def test_a_registered_pre_aggregator_changes_the_output(plugins):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [100.0, 200.0]], dtype=torch.float64)
    plain = make_defense("mean", 1)(x)
    dropped = make_defense("mean", 1, pre="test-drop-last")(x)
    assert torch.equal(plain, torch.tensor([27.25, 53.0], dtype=torch.float64))
    assert torch.equal(dropped, torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert [name for name, _ in plugins] == ["test-drop-last"]
    assert torch.equal(make_defense("median", 0, pre=("test-drop-last", {"k": 2}))(x),
                       torch.tensor([2.0, 3.0], dtype=torch.float64))


def test_pre_aggregators_run_in_the_given_order_before_the_rule(plugins):
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    d = make_defense("test-first-row", 1, pre=["nnm", ("test-drop-last", {"k": 1}), "test-double"])
    assert repr(d) == "nnm∘test-drop-last(k=1)∘test-double∘test-first-row(f=1, offset=0.0)"
    out = d(x)
    # nnm (f=1: each row with its 2 nearest others... n − f = 3 rows) -> drop the last -> double -> first row
    mixed = functional.nnm(x, 1)
    assert torch.equal(out, 2 * mixed[0])
    assert [name for name, _ in plugins] == ["test-drop-last", "test-double", "test-first-row"]
    torch.testing.assert_close(plugins[0][1], mixed, rtol=0, atol=1e-12)
    torch.testing.assert_close(plugins[2][1], 2 * mixed[:3], rtol=0, atol=1e-12)
    other = make_defense("test-first-row", 1, pre=["test-drop-last", "nnm"])(x)  # another order, another result
    assert not torch.equal(other, out)


def test_a_registered_rule_is_called_with_the_nnm_rows(plugins):
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[5] += 40.0
    out = make_defense("test-first-row", 2, pre="nnm", offset=1.5)(x)
    (name, seen), = plugins
    assert name == "test-first-row"
    torch.testing.assert_close(seen, functional.nnm(x, 2), rtol=0, atol=1e-12)
    assert torch.equal(out, seen[0] + 1.5)


def test_the_fused_kernel_runs_only_for_the_built_in_pairs(plugins, monkeypatch):
    fused, mixed = [], []
    real_mix = byzbn.kernels.nearest_neighbour_mixing
    monkeypatch.setattr(byzbn.kernels, "robust_aggregate",
                        lambda x, f, rule, nnm=True, backend="auto": fused.append((rule, nnm)) or x[0])
    monkeypatch.setattr(byzbn.kernels, "nearest_neighbour_mixing",
                        lambda x, f, backend="auto": mixed.append(f) or real_mix(x, f))
    x = torch.randn(5, 2)
    make_defense("median", 2, pre="nnm")(x)
    make_defense("trimmed-mean", 1)(x)
    assert fused == [("median", True), ("trimmed-mean", False)] and mixed == []
    make_defense("median", 1, pre=["nnm", "nnm"])(x)  # two NNM rounds: each one runs, then the rule alone
    make_defense("mean", 1, pre="test-double")(x)
    assert fused[2:] == [("median", False), ("mean", False)] and mixed == [1, 1]

    class Lower(CoordinateMedian):  # a subclass may change __call__: it is called, not the kernel
        def __call__(self, x):
            return x.min(dim=0).values

    register_aggregator("test-lower")(Lower)
    out = make_defense("test-lower", 1, pre="nnm")(x)
    assert len(fused) == 4 and mixed == [1, 1, 1]
    assert torch.equal(out, real_mix(x, 1).min(dim=0).values)


def test_check_n_uses_each_stages_bound_on_the_rows_it_receives(plugins):
    d = make_defense("median", 1, pre=("test-drop-last", {"k": 2}))
    d.check_n(5)  # median runs on 3 rows: 2f < 3
    with pytest.raises(ValueError, match=r"f=1 is out of range for median with n=2: valid 0 <= f <= 0"):
        d.check_n(4)
    with pytest.raises(ValueError, match=r"test-drop-last needs n > k=2, got n=2"):
        make_defense("mean", 0, pre=("test-drop-last", {"k": 2}))(torch.zeros(2, 3))
    # a rule without check_n needs 0 <= f <= n
    with pytest.raises(ValueError, match=r"f=4 is out of range with n=3: valid 0 <= f <= 3"):
        make_defense("test-first-row", 4)(torch.zeros(3, 2))


def test_parameters_come_from_the_signature(plugins):
    assert aggregator_parameters("test-first-row") == ["offset"]
    assert pre_aggregator_parameters("test-drop-last") == ["k"]
    assert aggregator_parameters("median") == [] and pre_aggregator_parameters("nnm") == []
    assert make_defense("test-first-row", 1, offset=2.0).params == {"offset": 2.0}
    assert make_defense("mean", 1, pre=("test-drop-last", {"k": 3})).pre_params == ({"k": 3},)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['kk'\] for pre-aggregator 'test-drop-last': "
                                         r"valid parameters are \['k'\]"):
        make_defense("mean", 1, pre=[("test-drop-last", {"kk": 3})])
    with pytest.raises(ValueError, match=r"unknown aggregator 'test-nothing': valid aggregators are "
                                         r"\[.*'test-first-row'"):
        aggregator_parameters("test-nothing")
    with pytest.raises(ValueError, match=r"unknown pre-aggregator 'x': valid pre-aggregators are "
                                         r"\['arc', 'bucketing', 'clipping', 'nnm', 'test-double'"):
        pre_aggregator_parameters("x")


def test_required_parameters_must_be_given():
    @register_aggregator("test-needs-beta")
    class NeedsBeta(Aggregator):
        def __init__(self, f, beta):
            super().__init__(f)
            self.beta = beta

        def __call__(self, x):
            return x.mean(dim=0) * self.beta

    try:
        with pytest.raises(ValueError, match=r"missing parameter\(s\) \['beta'\] for aggregator 'test-needs-beta'"):
            make_defense("test-needs-beta", 1)
        assert repr(make_defense("test-needs-beta", 1, beta=0.5)) == "test-needs-beta(f=1, beta=0.5)"
    finally:
        del AGGREGATORS["test-needs-beta"]


@pytest.mark.parametrize("pre, parsed", [
    (None, []), ("nnm", [("nnm", {})]), (("nnm", {}), [("nnm", {})]), (["nnm", "nnm"], [("nnm", {}), ("nnm", {})]),
    ((("nnm", {}), "nnm"), [("nnm", {}), ("nnm", {})]), ([], []),
])
def test_pre_accepts_names_and_name_params_pairs(pre, parsed):
    assert pre_stages(pre) == parsed


@pytest.mark.parametrize("pre, match", [
    ("bucket", r"pre must be None or one of \['arc', 'bucketing', 'clipping', 'nnm'\].*got 'bucket'"),
    (["nnm", "clip"], r"got 'clip'"),
    ([("nnm", "k=3")], r"got \('nnm', 'k=3'\)"),
    ({"nnm": {}}, r"pre must be None, a pre-aggregator name, \(name, params\) or a sequence of those"),
    (3, "a sequence of those, got 3"),
])
def test_bad_pre_specs_list_the_valid_pre_aggregators(pre, match):
    with pytest.raises(ValueError, match=match):
        make_defense("median", 1, pre=pre)


def test_registration_rejects_what_cannot_be_a_rule():
    class NoCall:
        def __init__(self, f):
            self.f = f

    class NoF:
        def __init__(self, beta=1.0):
            pass

        def __call__(self, x):
            return x[0]

    for bad, why in [(NoCall, "has no __call__"), (NoF, "takes no parameter f"), (lambda x: x[0], "got <function")]:
        with pytest.raises(ValueError, match=why):
            register_aggregator("test-bad")(bad)
        with pytest.raises(ValueError, match=why):
            register_pre_aggregator("test-bad")(bad)
    assert "test-bad" not in AGGREGATORS and "test-bad" not in PRE_AGGREGATORS


def test_contract_violations_of_plugins_raise(plugins):
    @register_aggregator("test-wrong-shape")
    class WrongShape(Aggregator):
        def __call__(self, x):
            return x

    @register_pre_aggregator("test-wrong-width")
    class WrongWidth(PreAggregator):
        def __call__(self, x):
            return x[:, :1]

    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"aggregator 'test-wrong-shape' must return a tensor \[d=3\].*got \[4, 3\]"):
        make_defense("test-wrong-shape", 1)(x)
    with pytest.raises(ValueError, match=r"pre-aggregator 'test-wrong-width' must return a tensor \[m, d=3\]"):
        make_defense("mean", 1, pre="test-wrong-width")(x)
