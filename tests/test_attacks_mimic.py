"""The mimic attack: every Byzantine row copies honest row epsilon (ByzFL's byzfl.Mimic semantics)."""
import pytest
import torch

from byzbn.attacks import ATTACKS, AttackContext, Mimic, attack_parameters, attack_stats, make_attack
from byzbn.stats import ClientStats, merge_stats, robust_merge_stats

# Three honest rows, distinct in every coordinate.
H3 = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]], dtype=torch.float64)


def test_mimic_is_registered_with_byzfls_parameter():
    assert ATTACKS["mimic"] is Mimic
    assert attack_parameters("mimic") == ["epsilon"]
    assert make_attack("mimic").epsilon == 0  # ByzFL's default: the first honest client
    assert repr(make_attack("mimic", epsilon=2)) == "make_attack('mimic', epsilon=2)"


@pytest.mark.parametrize("epsilon", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_byzantine_row_copies_honest_row_epsilon(epsilon, dtype):
    honest = H3.to(dtype)
    rows = make_attack("mimic", epsilon=epsilon)(honest, AttackContext(6, 3))
    assert rows.dtype == dtype and rows.shape == (3, 2)
    assert torch.equal(rows, honest[epsilon].expand(3, 2))


def test_rows_are_fresh_and_the_input_is_not_mutated():
    honest = H3.clone()
    rows = make_attack("mimic", epsilon=1)(honest, AttackContext(5, 2))
    rows += 100.0  # the rows must not alias the honest matrix
    assert torch.equal(honest, H3)


def test_f_zero_gives_no_rows():
    assert make_attack("mimic")(H3, AttackContext(3, 0)).shape == (0, 2)


@pytest.mark.parametrize("epsilon", [-1, 1.0, True, "0", None])
def test_epsilon_must_be_a_non_negative_int(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        make_attack("mimic", epsilon=epsilon)


def test_epsilon_must_index_an_honest_client():
    attack = make_attack("mimic", epsilon=3)
    with pytest.raises(ValueError, match=r"epsilon=3 is out of range: valid \[0, 2\].*h = n - f = 3"):
        attack(H3, AttackContext(5, 2))
    assert torch.equal(attack(torch.cat([H3, H3[:1]]), AttackContext(6, 2)), H3[:1].expand(2, 2))


def test_on_statistics_the_merge_counts_the_mimicked_client_f_plus_one_times():
    # Non-IID clients with different means and variances: mimic drags the merged statistics toward
    # client epsilon's, exactly as if that client had submitted f + 1 times.
    honest = ClientStats(mean=torch.tensor([[0.0, 1.0], [2.0, -1.0], [4.0, 3.0]], dtype=torch.float64),
                         var=torch.tensor([[1.0, 0.5], [2.0, 1.5], [0.5, 4.0]], dtype=torch.float64),
                         count=torch.tensor([10, 10, 10]))
    f, epsilon = 2, 2
    rows = attack_stats(honest, make_attack("mimic", epsilon=epsilon), AttackContext(5, f, channel="stats"))
    copied = [epsilon] * f
    assert torch.equal(rows.mean[3:], honest.mean[copied]) and torch.equal(rows.var[3:], honest.var[copied])
    merged = robust_merge_stats(rows, lambda x: x.mean(dim=0))
    expected = merge_stats(ClientStats(honest.mean[[0, 1, 2, 2, 2]], honest.var[[0, 1, 2, 2, 2]],
                                       torch.tensor([10] * 5)))
    torch.testing.assert_close(merged.mean, expected.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(merged.var, expected.var, rtol=0, atol=1e-12)
    honest_merge = merge_stats(honest)
    assert ((merged.mean - honest.mean[epsilon]).abs() < (honest_merge.mean - honest.mean[epsilon]).abs()).all()
