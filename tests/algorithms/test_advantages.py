"""Advantage estimators beyond GRPO/Dr.GRPO/RLOO, their edge cases, and multi-reward combination."""
from __future__ import annotations

import math

import pytest
import torch

from mmrl.algorithms import ADVANTAGES
from mmrl.algorithms.advantages import (
    beta_pdf, bnpo, bnpo_parameters, compute_advantages, grpo, ngrpo, reinforce_pp, tempsamp,
)
from rewards.temporal import tempsamp_transform


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def groups(*sizes):
    return torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))


# ---------------------------------------------------------------- edge cases shared by every estimator


def estimate(name: str, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``name``'s advantages of one reward component, through ``compute_advantages`` (which gives OPO its lengths,
    GDPO its components and ReMax its greedy rows: the last of each group)."""
    keep = torch.zeros_like(group_ids, dtype=torch.bool)
    keep[:-1] = group_ids[1:] == group_ids[:-1]
    return compute_advantages({"r": rewards}, {"r": 1.0}, group_ids, ADVANTAGES.get(name), "sum", {},
                              lengths=torch.full_like(rewards, 3), keep=keep)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_group_of_one_is_rejected(name):
    with pytest.raises(ValueError, match="group 1 has 1 completion"):
        estimate(name, t(1, 0, 1), torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_nan_reward_is_rejected(name):
    with pytest.raises(ValueError, match="completion 2 .group 1. is NaN"):
        estimate(name, t(1, 0, float("nan"), 1), groups(2, 2))


@pytest.mark.parametrize("name", sorted(set(ADVANTAGES.names()) - {"reward", "ngrpo", "reinforce_pp"}))
def test_identical_rewards_give_zero_advantage(name):
    # Every group-baselined estimator: r - mean_g = 0 in a constant group (BNPO: (R - p) = 0; TempSamp: the
    # transform of equal rewards is equal). NGRPO is the exception by design (tested below).
    adv = estimate(name, t(0.7, 0.7, 0.7, 0.2, 0.2, 0.2), groups(3, 3))
    assert torch.equal(adv, torch.zeros(6)), adv


# ---------------------------------------------------------------- REINFORCE++-baseline


def test_reinforce_pp_whitens_group_centred_rewards_over_the_batch():
    # Groups [1, 0, 0, 1] (mean 0.5) and [0, 0, 0, 1] (mean 0.25):
    # centred a = [0.5, -0.5, -0.5, 0.5, -0.25, -0.25, -0.25, 0.75]; mean(a) = 0; population var =
    # (4 * 0.25 + 3 * 0.0625 + 0.5625) / 8 = 1.75 / 8 = 0.21875; std = 0.467707.
    # A = a / 0.467707 = [1.069045, -1.069045, ..., -0.534522, 1.603567].
    adv = reinforce_pp(t(1, 0, 0, 1, 0, 0, 0, 1), groups(4, 4), {})
    expected = t(1.069045, -1.069045, -1.069045, 1.069045, -0.534522, -0.534522, -0.534522, 1.603567)
    assert torch.allclose(adv, expected, atol=1e-5)


def test_reinforce_pp_of_constant_batch_is_zero():
    assert torch.equal(reinforce_pp(t(1, 1, 0, 0), groups(2, 2), {}), torch.zeros(4))


# ---------------------------------------------------------------- NGRPO


def test_ngrpo_all_wrong_group_gets_negative_advantages():
    # Virtual reward 1 joins [0, 0, 0, 0]: mean 0.2, unbiased std of [0,0,0,0,1] = sqrt((4*0.04 + 0.64)/4) =
    # sqrt(0.2) = 0.447214; A = -0.2 / 0.447214 = -0.447214 (GRPO would give 0).
    assert torch.allclose(ngrpo(t(0, 0, 0, 0), groups(4), {}), torch.full((4,), -0.447214), atol=1e-5)


def test_ngrpo_one_correct_in_eight():
    # [1, 0 x 7] + virtual 1: mean 2/9 = 0.222222; unbiased var = (2 * 0.777778^2 + 7 * 0.222222^2) / 8 = 0.194444,
    # std 0.440959; A = 0.777778 / 0.440959 = 1.763834 and -0.222222 / 0.440959 = -0.503953 (NGRPO's case study:
    # +1.76 / -0.50).
    adv = ngrpo(t(1, 0, 0, 0, 0, 0, 0, 0), groups(8), {})
    assert adv[0].item() == pytest.approx(1.763834, abs=1e-5)
    assert torch.allclose(adv[1:], torch.full((7,), -0.503953), atol=1e-5)


def test_ngrpo_all_correct_group_is_zero():
    assert torch.allclose(ngrpo(t(1, 1, 1), groups(3), {}), torch.zeros(3), atol=1e-6)


# ---------------------------------------------------------------- TempSamp-R1


def test_tempsamp_transform_values():
    # tau = 0.8, alpha = 1:
    #   IoU 1.0 >= tau: 0.8 + 0.01 ln(1.2) = 0.801823
    #   IoU 0.8: 0.8 + 0.01 ln(1) = 0.8
    #   IoU 0.5: 0.8 - (e^0.3 - 1) / (e - 1) = 0.8 - 0.3498588 / 1.7182818 = 0.8 - 0.2036097 = 0.5963903
    #   IoU 0.0: 0.8 - (e^0.8 - 1) / (e - 1) = 0.8 - 1.2255409 / 1.7182818 = 0.8 - 0.7132363 = 0.0867637
    out = tempsamp_transform(torch.tensor([1.0, 0.8, 0.5, 0.0], dtype=torch.float64), 0.8, 1.0)
    assert out.tolist() == pytest.approx([0.801823, 0.8, 0.5963903, 0.0867637], abs=1e-6)


def test_tempsamp_is_grpo_of_the_transformed_rewards():
    r = t(1.0, 0.85, 0.6, 0.0)
    expected = grpo(tempsamp_transform(r, 0.8, 1.0), groups(4), {})
    assert torch.equal(tempsamp(r, groups(4), {}), expected)
    # Above tau the credit is nearly flat: 1.0 and 0.85 get almost the same advantage, unlike plain GRPO.
    shaped, raw = tempsamp(r, groups(4), {}), grpo(r, groups(4), {})
    assert abs(shaped[0] - shaped[1]) < 0.05 < abs(raw[0] - raw[1])


# ---------------------------------------------------------------- BNPO


def test_bnpo_parameters_by_method_of_moments():
    # Success rates [0.25, 0.5, 0.75, 0]: mu = 0.375, unbiased var = (0.015625 + 0.015625 + 0.140625 + 0.140625)/3
    # = 0.104167; k = 0.375 * 0.625 / 0.104167 - 1 = 1.25; a = 0.46875, b = 0.78125;
    # alpha = 1 + a/3 = 1.15625, beta = 1 + b/3 = 1.260417.
    alpha, beta = bnpo_parameters(torch.tensor([0.25, 0.5, 0.75, 0.0], dtype=torch.float64))
    assert (alpha, beta) == (pytest.approx(1.15625), pytest.approx(1.260417, abs=1e-6))


def test_bnpo_advantages_hand_case():
    # Groups [1,0,0,0], [1,1,0,0], [1,1,1,0], [0,0,0,0]: p = 0.25, 0.5, 0.75, 0 and Beta(1.15625, 1.260417) from
    # the test above. A = (R - p) / f(p) with f the Beta density, evaluated here independently with math.lgamma;
    # the last group (p = 0, all R = 0) gets 0. The reference implementation's numbers for this batch are
    # [0.673, -0.224 x 3], [±0.447], [0.252 x 3, -0.755], [0 x 4].
    st: dict = {}
    r = t(1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0)
    adv = bnpo(r, groups(4, 4, 4, 4), st)
    a, b = st["alpha"], st["beta"]
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    pdf = lambda p: math.exp((a - 1) * math.log(p) + (b - 1) * math.log(1 - p) - log_beta)  # noqa: E731
    assert adv[0].item() == pytest.approx(0.75 / pdf(0.25), rel=1e-5)
    assert adv[5].item() == pytest.approx(0.5 / pdf(0.5), rel=1e-5)
    assert adv[11].item() == pytest.approx(-0.75 / pdf(0.75), rel=1e-5)
    expected = [0.673, -0.224, -0.224, -0.224, 0.447, 0.447, -0.447, -0.447, 0.252, 0.252, 0.252, -0.755, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-3)


def test_bnpo_beta_one_one_is_reinforce_with_baseline():
    # Equal success rates across prompts (var 0) -> Beta(1, 1), f = 1: A = R - p.
    st: dict = {}
    adv = bnpo(t(1, 0, 1, 0), groups(2, 2), st)
    assert (st["alpha"], st["beta"]) == (1.0, 1.0)
    assert torch.allclose(adv, t(0.5, -0.5, 0.5, -0.5))


def test_bnpo_three_halves_is_scaled_grpo_with_population_std():
    # f_N(p; 3/2, 3/2) = (8/pi) sqrt(p(1 - p)) and the population std of binary rewards is sqrt(p(1 - p)), so
    # (R - p) / f_N = (pi / 8) (R - p) / std_pop.
    p = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert torch.allclose(beta_pdf(p, 1.5, 1.5), 8 / math.pi * (p * (1 - p)).sqrt())


def test_bnpo_momentum_keeps_state():
    st: dict = {"alpha": 2.0, "beta": 3.0}
    r = t(1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0)
    bnpo(r, groups(4, 4, 4, 4), st, momentum=0.5)
    # 0.5 * 2 + 0.5 * 1.15625 = 1.578125; 0.5 * 3 + 0.5 * 1.260417 = 2.130208
    assert (st["alpha"], st["beta"]) == (pytest.approx(1.578125), pytest.approx(2.130208, abs=1e-6))


# ---------------------------------------------------------------- multi-reward combination


def test_sum_then_normalise_vs_normalise_each_then_sum():
    # Components over one group of 4: accuracy [1, 0, 0, 1], format [1, 1, 0, 1]; weights 1 and 0.5.
    # sum: r = [1.5, 0.5, 0, 1.5], mean 0.875, unbiased std = sqrt((3*0.390625 + 0.765625)/3) = 0.75
    #      -> A = [0.833333, -0.5, -1.166667, 0.833333]
    # per_component: acc A = ±0.866025; format [1,1,0,1] mean 0.75, std 0.5 -> [0.5, 0.5, -1.5, 0.5];
    #      A = acc + 0.5 * fmt = [1.116025, -0.616025, -1.616025, 1.116025]
    comps = {"accuracy": t(1, 0, 0, 1), "format": t(1, 1, 0, 1)}
    weights = {"accuracy": 1.0, "format": 0.5}
    est = ADVANTAGES.bind("grpo")
    summed = compute_advantages(comps, weights, groups(4), est, "sum", {})
    each = compute_advantages(comps, weights, groups(4), est, "per_component", {})
    assert summed.tolist() == pytest.approx([0.833333, -0.5, -1.166667, 0.833333], abs=1e-5)
    assert each.tolist() == pytest.approx([1.116025, -0.616025, -1.616025, 1.116025], abs=1e-5)


def test_per_component_keeps_one_state_per_component():
    st: dict = {}
    comps = {"a": t(1, 0, 1, 1), "b": t(0, 1, 1, 1)}
    compute_advantages(comps, {"a": 1.0, "b": 1.0}, groups(2, 2), ADVANTAGES.bind("bnpo"), "per_component", st)
    assert set(st) == {"a", "b"} and all("alpha" in v for v in st.values())


def test_bnpo_is_finite_when_groups_always_or_never_succeed():
    # Success rates [0, 1, 0.5, 0.5]: mu = 0.5, var = 1/6, k = 0.5, a = b = 0.25 -> alpha = beta = 1.083333;
    # groups at p = 0 and p = 1 have R - p = 0 and must give 0, not 0 * inf = NaN.
    adv = bnpo(t(0, 0, 1, 1, 1, 0, 0, 1), groups(2, 2, 2, 2), {})
    assert torch.isfinite(adv).all()
    assert adv[:4].tolist() == [0.0] * 4
    # Beta(1, b): the density at p = 0 is finite (0 * log 0 = 0).
    assert torch.isfinite(beta_pdf(torch.tensor([0.0, 1.0], dtype=torch.float64), 1.0, 1.0)).all()
