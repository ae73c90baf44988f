"""byzbn.attacks as an extension point: AttackContext, fresh reproducible noise, plugins, the output contract."""
import dataclasses

import numpy as np

import pytest
import torch

from byzbn.attacks import (ATTACKS, Attack, AttackContext, attack_parameters, attack_stats, byzantine_rows,
                           make_attack, register_attack)
from byzbn.defenses import functional, make_defense
from byzbn.stats import ClientStats

H3 = [[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]]


def h3(dtype=torch.float64):
    return torch.tensor(H3, dtype=dtype)


@pytest.fixture
def plugins():
    """Names registered by a test are removed afterwards, so the registry stays the built-in one."""
    before = set(ATTACKS)
    yield
    for name in set(ATTACKS) - before:
        del ATTACKS[name]


# ---------------------------------------------------------------- the context

@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0, f=0), "n=0 is out of range"),
    (dict(n=5.0, f=2), "n must be an int"),
    (dict(n=3, f=4), "f=4 is out of range"),
    (dict(n=3, f=1, defense="median"), "defense must be None or a callable"),
    (dict(n=3, f=1, generator=0), "generator must be None or a torch.Generator"),
    (dict(n=3, f=1, step=-1), "step=-1 is out of range"),
    (dict(n=3, f=1, channel=None), "channel must be a str"),
    (dict(n=3, f=1, model="net"), "model must be None or a torch.nn.Module"),
    (dict(n=3, f=1, batches=[1]), "batches must be None or a tuple"),
])
def test_context_validates_its_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackContext(**kwargs)


def test_context_is_frozen_and_replaceable():
    ctx = AttackContext(5, 2, step=3, channel="bn")
    assert (ctx.n, ctx.f, ctx.h, ctx.defense, ctx.generator, ctx.step, ctx.channel) == (5, 2, 3, None, None, 3, "bn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.step = 4
    assert dataclasses.replace(ctx, step=4).step == 4 and ctx.step == 3


# ---------------------------------------------------------------- gaussian noise: fresh and reproducible

def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1)
    return torch.Generator().manual_seed(int(state))


def run_noise(seed: int, steps: int = 3, channel: str = "grad") -> list[torch.Tensor]:
    """What a runner does: one context per step, its generator seeded from (run seed, step, channel)."""
    attack = make_attack("gaussian", sigma=1.0)
    stream = ["grad", "bn"].index(channel)
    return [attack(h3(), AttackContext(5, 2, generator=step_generator(seed, step, stream), step=step,
                                       channel=channel)) for step in range(steps)]


def test_gaussian_noise_differs_between_steps_and_is_identical_across_runs_with_the_same_seed():
    first, again, other = run_noise(seed=11), run_noise(seed=11), run_noise(seed=12)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(first[0], run_noise(seed=11, channel="bn")[0])


def test_gaussian_draws_fresh_noise_from_one_generator_called_twice():
    attack = make_attack("gaussian")
    ctx = AttackContext(5, 2, generator=torch.Generator().manual_seed(0))
    first, second = attack(h3(), ctx), attack(h3(), ctx)
    assert not torch.equal(first, second)
    # ...and it is the generator's draw: mu + sigma · N(0, 1) in float64
    expected = 200.0 * torch.randn((2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(first, expected)
    assert not torch.equal(first[0], first[1])  # rows are independent draws too


def test_gaussian_without_a_generator_differs_between_steps_but_not_between_calls():
    attack = make_attack("gaussian", seed=5)
    at = [attack(h3(), AttackContext(5, 2, step=step)) for step in range(3)]
    assert torch.equal(at[0], attack(h3(), AttackContext(5, 2)))
    assert not torch.equal(at[0], at[1]) and not torch.equal(at[1], at[2])
    assert torch.equal(at[1], make_attack("gaussian", seed=5)(h3(), AttackContext(5, 2, step=1, channel="bn")))
    # (seed, step) pairs are mixed, not added: seed 6 at step 0 is not seed 5 at step 1
    assert not torch.equal(at[1], make_attack("gaussian", seed=6)(h3(), AttackContext(5, 2, step=0)))


# ---------------------------------------------------------------- plugins

def test_a_registered_function_is_called_through_make_attack(plugins):
    seen = []

    @register_attack("test-double-mean")
    def double_mean(honest, context):
        """Every Byzantine client sends twice the honest mean."""
        seen.append(context)
        return (2 * honest.mean(dim=0)).expand(context.f, -1).clone()

    assert double_mean(h3(), AttackContext(4, 1)).shape == (1, 2)  # the decorator returns the function
    seen.clear()
    attack = make_attack("test-double-mean")
    ctx = AttackContext(5, 2, step=7)
    assert torch.equal(attack(h3(), ctx), torch.tensor([[6.0, 8.0]] * 2, dtype=torch.float64))
    assert seen == [ctx]
    assert isinstance(attack, Attack) and attack.name == "test-double-mean" and attack_parameters(attack.name) == []
    assert repr(attack) == "make_attack('test-double-mean')" and "twice the honest mean" in type(attack).__doc__
    assert torch.equal(byzantine_rows(h3(), attack, ctx), attack(h3(), ctx)) and len(seen) == 3
    attack(h3(), AttackContext(3, 0))  # f = 0: nothing to attack, the function is not called
    assert len(seen) == 3
    with pytest.raises(ValueError, match=r"unknown parameter.*'scale'.*valid parameters are \[\]"):
        make_attack("test-double-mean", scale=2.0)


def test_a_registered_class_with_parameters_is_validated_and_called(plugins):
    @register_attack("test-shift")
    class Shift:  # does not derive from Attack: byzantine_rows still checks what it returns
        def __init__(self, by: float, rows_out: int = 0):
            self.by, self.rows_out = by, rows_out

        def __call__(self, honest, context):
            return honest[:1].repeat(context.f + self.rows_out, 1) + self.by

    assert attack_parameters("test-shift") == ["by", "rows_out"]
    with pytest.raises(ValueError, match=r"missing parameter\(s\) \['by'\] for attack 'test-shift'"):
        make_attack("test-shift")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['bye'\].*\['by', 'rows_out'\]"):
        make_attack("test-shift", bye=1.0)
    rows = byzantine_rows(h3(), make_attack("test-shift", by=1.0), AttackContext(5, 2))
    assert torch.equal(rows, torch.tensor([[2.0, 3.0]] * 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"attack 'test-shift' must return rows of shape \[2, 2\].*got shape \[3, 2\]"):
        byzantine_rows(h3(), make_attack("test-shift", by=1.0, rows_out=1), AttackContext(5, 2))


def test_registration_rejects_what_cannot_be_called_as_an_attack(plugins):
    def old_style(honest, n, f, defense):  # the call signature before contexts
        return honest

    class OldStyle:
        def __call__(self, honest, n, f, defense=None):
            return honest

    for bad in (old_style, OldStyle, object, 3):
        with pytest.raises(ValueError, match=r"must decorate an Attack subclass.*fn\(honest, context\)"):
            register_attack("test-bad")(bad)
    with pytest.raises(ValueError, match="Rowless does not implement rows"):
        register_attack("test-bad")(type("Rowless", (Attack,), {}))
    assert "test-bad" not in ATTACKS
    with pytest.raises(ValueError, match="'sign-flip' is already registered"):
        register_attack("sign-flip")(lambda honest, context: honest)
    with pytest.raises(ValueError, match=r"unknown attack 'test-bad': valid attacks are \[.*'sign-flip'"):
        make_attack("test-bad")


# ---------------------------------------------------------------- the output contract

class Broken(Attack):
    """Returns what `make` builds, to exercise the contract checks."""

    def __init__(self, make):
        self.make = make

    def rows(self, honest, context):
        return self.make(honest, context)


@pytest.mark.parametrize("make, match", [
    (lambda h, c: h[:1], r"shape \[2, 2\].*got shape \[1, 2\]"),
    (lambda h, c: torch.zeros(2, 3, dtype=h.dtype), r"got shape \[2, 3\]"),
    (lambda h, c: torch.zeros(2, 2, dtype=torch.float32),
     r"dtype torch.float64.*got shape \[2, 2\], dtype torch.float32"),
    (lambda h, c: [[0.0, 0.0]] * 2, "must return a torch.Tensor"),
], ids=["too-few-rows", "wrong-width", "wrong-dtype", "not-a-tensor"])
def test_contract_violations_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        Broken(make)(h3(), AttackContext(5, 2))
    with pytest.raises(ValueError, match=match):
        byzantine_rows(h3(), Broken(make), AttackContext(5, 2))


def test_attack_needs_an_attack_context():
    with pytest.raises(ValueError, match="context must be a byzbn.attacks.AttackContext, got tuple"):
        make_attack("sign-flip")(h3(), (5, 2))


# ---------------------------------------------------------------- the defense comes from the context

def test_optimal_attacks_search_against_the_contexts_defense():
    gen = torch.Generator().manual_seed(3)
    honest = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    attack = make_attack("optimal-alie")
    nnm_median = make_defense("median", 3, pre="nnm")
    against_nnm = byzantine_rows(honest, attack, AttackContext(10, 3, nnm_median))
    against_mean = byzantine_rows(honest, attack, AttackContext(10, 3, functional.mean))
    assert not torch.equal(against_nnm, against_mean)
    assert torch.equal(against_nnm, attack(honest, AttackContext(10, 3, nnm_median, step=9)))


def test_attack_stats_claims_the_median_count_per_channel():
    count = torch.tensor([[10, 7], [30, 5], [20, 9]])  # per-channel counts, as concat_stats gives them
    honest = ClientStats(mean=h3(), var=h3().abs(), count=count)
    out = attack_stats(honest, make_attack("sign-flip"), AttackContext(5, 2))
    assert out.count.tolist() == [[10, 7], [30, 5], [20, 9], [20, 7], [20, 7]]
