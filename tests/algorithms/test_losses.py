"""Policy losses against hand-computed numbers.

Shared example (unless a test says otherwise): logp = [-1.0, -0.5, -2.0], old = [-1.2, -0.5, -1.5], so the
token ratios are rho = exp(logp - old) = [e^0.2, 1, e^-0.5] = [1.221403, 1.0, 0.606531].
"""
from __future__ import annotations

import math

import pytest
import torch

from mmrl.algorithms import POLICY_LOSSES
from mmrl.algorithms.aggregation import seq_mean_token_mean
from dataclasses import replace

from mmrl.algorithms.losses import bapo_bounds, cispo, gspo, ngrpo_asym, ppo_clip, topr, trust_region_stretch

LOGP = [-1.0, -0.5, -2.0]
OLD = [-1.2, -0.5, -1.5]


def example(adv: float):
    logp = torch.tensor([LOGP], requires_grad=True)
    return logp, torch.tensor([OLD]), torch.tensor([adv])


def grad_of(loss: torch.Tensor, logp: torch.Tensor) -> list[float]:
    loss.sum().backward()
    return logp.grad[0].tolist()


# ---------------------------------------------------------------- dual clip


def test_dual_clip_bounds_the_loss_of_negative_advantages(make_batch):
    # rho = [e^1.5 = 4.481689, e^0.2 = 1.221403, e^-0.5 = 0.606531], A = -1, eps 0.2, c = 3:
    #   token 0: PPO loss -min(-4.4817, -1.2) = 4.4817 > 3 -> 3 (dual clip, zero gradient)
    #   token 1: -min(-1.2214, -1.2) = 1.2214 (< 3, unclipped, gradient rho = 1.2214)
    #   token 2: -min(-0.6065, -0.8) = 0.8 (lower clip, zero gradient)
    logp = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.2, -1.5]])
    loss, clipped = ppo_clip(make_batch(logp, old, torch.tensor([-1.0])), dual_clip=3.0)
    assert loss[0].tolist() == pytest.approx([3.0, 1.221403, 0.8], abs=1e-5)
    assert clipped[0].tolist() == [True, False, True]
    assert grad_of(loss, logp) == pytest.approx([0.0, 1.221403, 0.0], abs=1e-5)


def test_dual_clip_leaves_positive_advantages_alone(make_batch):
    logp, old, _ = example(1.0)
    plain = ppo_clip(make_batch(logp, old, torch.tensor([2.0]))).loss
    dual = ppo_clip(make_batch(logp, old, torch.tensor([2.0])), dual_clip=3.0).loss
    assert torch.equal(plain, dual)


# ---------------------------------------------------------------- Trust Region Stretch (CAD-RL)


def test_trust_region_stretch_widens_the_upper_bound_with_progress(make_batch):
    # A = +1, rho = 1.25. eps_high(p) = 0.2 + (0.28 - 0.2) * min(1, p / 0.5):
    #   p = 0    -> 1.20 clips: loss -1.20, no gradient;
    #   p = 0.25 -> 1.24 clips: loss -1.24;
    #   p = 0.5 and 0.9 -> 1.28 does not clip: loss -1.25, gradient -1.25.
    logp = torch.tensor([[math.log(1.25)]], requires_grad=True)
    batch = make_batch(logp, torch.zeros(1, 1), torch.tensor([1.0]))
    args = dict(eps_high_start=0.2, eps_high_end=0.28, stretch_fraction=0.5)
    losses = [trust_region_stretch(replace(batch, progress=p), **args).loss.item() for p in (0.0, 0.25, 0.5, 0.9)]
    assert losses == pytest.approx([-1.20, -1.24, -1.25, -1.25])
    late = trust_region_stretch(replace(batch, progress=0.9), **args)
    assert not late.clipped.item() and grad_of(late.loss, logp) == pytest.approx([-1.25])
    # the lower bound stays eps_low: A = -1, rho = 0.7 clips at 0.8 whatever the progress
    low = torch.tensor([[math.log(0.7)]], requires_grad=True)
    neg = make_batch(low, torch.zeros(1, 1), torch.tensor([-1.0]))
    assert trust_region_stretch(replace(neg, progress=0.9), **args).loss.item() == pytest.approx(0.8)


# ---------------------------------------------------------------- NGRPO asymmetric clip


def test_ngrpo_asym_hand_case(make_batch):
    # A = -1, rho = 0.82: NGRPO's negative bound 1 - 0.16 = 0.84 clips it: loss -min(-0.82, -0.84) = 0.84, grad 0.
    # Symmetric PPO (0.2, bound 0.8) would not clip: loss 0.82, grad 0.82.
    logp = torch.tensor([[math.log(0.82)]], requires_grad=True)
    loss, clipped = ngrpo_asym(make_batch(logp, torch.zeros(1, 1), torch.tensor([-1.0])))
    assert loss.item() == pytest.approx(0.84) and clipped.item()
    assert grad_of(loss, logp) == [0.0]
    # A = +1, rho = 1.22: the positive bound 1.24 does not clip (loss -1.22, grad -1.22); PPO's 1.2 would.
    logp = torch.tensor([[math.log(1.22)]], requires_grad=True)
    loss, clipped = ngrpo_asym(make_batch(logp, torch.zeros(1, 1), torch.tensor([1.0])))
    assert loss.item() == pytest.approx(-1.22) and not clipped.item()
    assert grad_of(loss, logp) == pytest.approx([-1.22])


def test_ngrpo_asym_equals_decoupled_ppo_clip(make_batch):
    # Only the upper bound binds for A > 0 and only the lower for A < 0.
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(6, 5, generator=g) * 0.3, torch.randn(6, 5, generator=g) * 0.3
    adv = torch.randn(6, generator=g)
    a = ngrpo_asym(make_batch(logp, old, adv), eps_pos=0.3, eps_neg=0.1).loss
    b = ppo_clip(make_batch(logp, old, adv), eps_low=0.1, eps_high=0.3).loss
    assert torch.allclose(a, b)


# ---------------------------------------------------------------- GSPO


def test_gspo_sequence_ratio_and_clip(make_batch):
    # s = exp(mean(0.2, 0, -0.5)) = exp(-0.1) = 0.904837, the same on every token.
    # A = +1: min(s, clip(s, 1 - 3e-4, 1 + 4e-4)) = min(0.904837, 0.9997) = s -> loss -0.904837, unclipped.
    logp, old, adv = example(1.0)
    loss, clipped = gspo(make_batch(logp, old, adv))
    assert loss[0].tolist() == pytest.approx([-0.904837] * 3, abs=1e-6)
    assert not clipped.any()
    # A = -1: min(-0.904837, -0.9997) = -0.9997 -> loss 0.9997, clipped, no gradient.
    logp, old, adv = example(-1.0)
    loss, clipped = gspo(make_batch(logp, old, adv))
    assert loss[0].tolist() == pytest.approx([0.9997] * 3, abs=1e-6)
    assert clipped.all()
    assert grad_of(loss, logp) == [0.0, 0.0, 0.0]


def test_gspo_token_form_has_the_sequence_level_gradient(make_batch):
    # GSPO's own objective for one sequence: -min(s A, clip(s) A) with s = exp(mean_t(logp - old)). Its gradient
    # is -A s / |y| per token = -0.904837 / 3 = -0.301612 for A = 1; the token form under seq_mean_token_mean
    # must give the same.
    logp, old, adv = example(1.0)
    token = gspo(make_batch(logp, old, adv)).loss
    seq_mean_token_mean(token, torch.ones(1, 3), 3, 1, 3).backward()
    ref_logp = torch.tensor([LOGP], requires_grad=True)
    s = torch.exp((ref_logp - torch.tensor([OLD])).mean())
    (-torch.minimum(s * 1.0, s.clamp(1 - 3e-4, 1 + 4e-4) * 1.0)).backward()
    assert logp.grad[0].tolist() == pytest.approx(ref_logp.grad[0].tolist(), abs=1e-7)
    assert logp.grad[0].tolist() == pytest.approx([-0.301612] * 3, abs=1e-6)


def test_gspo_ignores_masked_tokens_in_the_ratio(make_batch):
    # Masking token 2 out: s = exp(mean(0.2, 0)) = exp(0.1) = 1.105171; with A = +1 it exceeds 1 + 4e-4 and the
    # clipped branch wins: loss -1.0004 on the two real tokens.
    logp, old, adv = example(1.0)
    loss, _ = gspo(make_batch(logp, old, adv, mask=torch.tensor([[1.0, 1.0, 0.0]])))
    assert loss[0, :2].tolist() == pytest.approx([-1.0004, -1.0004], abs=1e-6)


# ---------------------------------------------------------------- CISPO


def test_cispo_clips_the_weight_not_the_gradient(make_batch):
    # eps_high 0.2, no lower bound: weights clip(rho, 0, 1.2) = [1.2, 1, 0.606531].
    # A = +1: loss = -w A logp = [1.2, 0.5, 1.213061]; gradient -w A = [-1.2, -1, -0.606531] (token 0 keeps one).
    logp, old, adv = example(1.0)
    loss, clipped = cispo(make_batch(logp, old, adv), eps_high=0.2)
    assert loss[0].tolist() == pytest.approx([1.2, 0.5, 1.213061], abs=1e-5)
    assert clipped[0].tolist() == [True, False, False]
    assert grad_of(loss, logp) == pytest.approx([-1.2, -1.0, -0.606531], abs=1e-5)


# ---------------------------------------------------------------- TOPR


def test_topr_tapers_only_negatives(make_batch):
    # Full-sequence ratio exp(0.2 + 0 - 0.5) = exp(-0.3) = 0.740818.
    # A = -1: w = clip(0.740818, 0, 1) -> gradient -w A = +0.740818 per token.
    logp, old, adv = example(-1.0)
    assert grad_of(topr(make_batch(logp, old, adv)).loss, logp) == pytest.approx([0.740818] * 3, abs=1e-6)
    # A = +1: w = 1 whatever the ratio (SFT-like) -> gradient -1 per token.
    logp, old, adv = example(1.0)
    assert grad_of(topr(make_batch(logp, old, adv)).loss, logp) == pytest.approx([-1.0] * 3)
    # A = -1 with a ratio above 1 (exp(0.5)): the weight is capped at 1.
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = topr(make_batch(logp, torch.tensor([[-0.3, -0.2]]), torch.tensor([-1.0]))).loss
    assert grad_of(loss, logp) == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------- BAPO


def test_bapo_widens_the_upper_bound_until_positives_count():
    # Positive token rho = 1.5 (A = +1) is clipped at c_high = 1.2: it contributes nothing; a negative token
    # rho = 1.0 (A = -1) contributes |1 * -1| = 1. Share 0 < 0.5: c_high rises by 0.05 until 1.5 lets the positive
    # token through: share 1.5 / (1.5 + 1) = 0.6 >= 0.5. c_low stays 0.6.
    ratio = torch.tensor([[1.5], [1.0]])
    adv = torch.tensor([[1.0], [-1.0]])
    low, high = bapo_bounds(ratio, adv, torch.ones(2, 1), target=0.5, low=(0.6, 0.9), high=(1.2, 3.0), step=0.05)
    assert (low, high) == (pytest.approx(0.6), pytest.approx(1.5))


def test_bapo_raises_the_lower_bound_once_the_upper_is_spent():
    # The positive token (rho = 3.5 > 3.0) can never count, so c_high reaches 3.0 and c_low then climbs to its cap
    # 0.9, excluding the rho = 0.7 negative token from the update on the way.
    ratio = torch.tensor([[3.5], [0.7], [1.0]])
    adv = torch.tensor([[1.0], [-1.0], [-1.0]])
    low, high = bapo_bounds(ratio, adv, torch.ones(3, 1), target=0.5, low=(0.6, 0.9), high=(1.2, 3.0), step=0.05)
    assert (low, high) == (pytest.approx(0.9), pytest.approx(3.0))


def test_bapo_balanced_batch_keeps_the_initial_bounds():
    # Positive share already 0.5 with every token inside [0.6, 1.2]: no change.
    ratio = torch.tensor([[1.0], [1.0]])
    adv = torch.tensor([[1.0], [-1.0]])
    assert bapo_bounds(ratio, adv, torch.ones(2, 1), target=0.5, low=(0.6, 0.9), high=(1.2, 3.0),
                       step=0.05) == (0.6, 1.2)


# ---------------------------------------------------------------- on-policy gradient equality

PPO_FAMILY = [("ppo_clip", {}), ("ppo_clip", {"dual_clip": 3.0}), ("ppo_clip", {"delta": 1.5}), ("ngrpo_asym", {}),
              ("gspo", {}), ("cispo", {}), ("cispo", {"level": "sequence"}), ("bapo", {}), ("sapo", {}),
              ("sapo", {"level": "sequence"}), ("vespo", {}), ("kl_cov", {})]


@pytest.mark.parametrize(("name", "args"), PPO_FAMILY)
def test_on_policy_gradient_equals_plain_policy_gradient(make_batch, name, args):
    # With old = logp (mu = 1) every ratio is 1: the gradient of each PPO-family loss must equal that of the
    # plain policy-gradient loss -A logp, i.e. -A on every unmasked token.
    g = torch.Generator().manual_seed(1)
    logp = (torch.randn(4, 6, generator=g) - 2).requires_grad_()
    adv = torch.randn(4, generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.3).float()
    loss = POLICY_LOSSES.bind(name, args)(make_batch(logp, logp.detach(), adv, mask=mask)).loss
    (loss * mask).sum().backward()
    plain = logp.detach().clone().requires_grad_()
    ((-adv[:, None] * plain) * mask).sum().backward()
    assert torch.allclose(logp.grad, plain.grad, atol=1e-6)


# ---------------------------------------------------------------- APO, NSR, OPMD, AsymRE on one toy group
# One prompt, 4 completions of 2, 4, 3, 3 tokens, binary rewards [1, 0, 0, 1] (group mean 0.5). Expected values
# were computed independently by re-implementing each method's reference code (View-R1 for APO, RLVR-Decomposed
# for W-REINFORCE, Trinity-RFT for OPMD/AsymRE) on these numbers; the per-token gradients are derived in comments.


def _pad(rows, width=4):
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])


@pytest.fixture
def toy(make_batch):
    logp = _pad([[-.5, -1], [-.2, -.7, -1.5, -.3], [-.9, -.4, -.6], [-.3, -.8, -.1]]).requires_grad_()
    old = _pad([[-.6, -.9], [-.2, -.5, -1.4, -.4], [-1., -.4, -.5], [-.3, -1., -.2]])
    ref = _pad([[-.7, -1.1], [-.3, -.6, -1.2, -.5], [-.8, -.5, -.7], [-.4, -.9, -.3]])
    mask = _pad([[1, 1], [1, 1, 1, 1], [1, 1, 1], [1, 1, 1]])

    def build(adv, positive_len=None):
        return make_batch(logp, old, torch.tensor(adv), mask=mask, rewards=torch.tensor([1.0, 0, 0, 1]),
                          group_mean=torch.full((4,), 0.5), ref=ref, positive_len=positive_len)

    return logp, mask, build


def test_apo_difficulty_adaptive_kl_and_length_penalty(toy):
    from mmrl.algorithms.aggregation import seq_mean_token_mean
    from mmrl.algorithms.losses import apo, positive_lengths

    logp, mask, build = toy
    a = 0.866025  # GRPO advantage of [1, 0, 0, 1]
    pos_len = positive_lengths(mask.sum(-1), torch.tensor([a, -a, -a, a]), torch.zeros(4, dtype=torch.long))
    assert pos_len.tolist() == [2.5] * 4  # positives have 2 and 3 tokens
    loss = seq_mean_token_mean(apo(build([a, -a, -a, a], pos_len)).loss, mask, 12, 4, 4)
    loss.backward()
    # DADS weight on the positives: 1 - exp(-e * 0.5) = 0.743; k3 with kl_coef 1e-3. Reference value -0.031640.
    assert loss.item() == pytest.approx(-0.031640, abs=1e-6)
    # Row 0 (A > 0, rho = e^0.1, e^-0.1 both inside the clip): PPO part -A rho / (4 * 2), plus the KL part.
    assert logp.grad[0, :2].tolist() == pytest.approx([-0.1196, -0.0979], abs=1e-4)


def test_apo_stcr_scales_long_negative_advantages(make_batch):
    from mmrl.algorithms.losses import apo

    # Negative completion of 1000 tokens vs positive mean 0 -> here 1000 tokens longer with base 1.00001:
    # w = 1 - 1.00001^-1000 = 0.0099502; on-policy the PPO gradient is -A (1 + w) per token = 1.0099502 for A = -1.
    logp = torch.zeros(1, 1000, requires_grad=True)
    b = make_batch(logp, logp.detach(), torch.tensor([-1.0]), ref=torch.zeros(1, 1000),
                   positive_len=torch.tensor([1e-9]), group_mean=torch.tensor([0.5]))
    apo(b).loss.sum().backward()
    assert logp.grad[0, 0].item() == pytest.approx(1.0099502, abs=1e-6)


def test_w_reinforce(toy):
    from mmrl.algorithms.aggregation import token_mean
    from mmrl.algorithms.losses import nsr

    logp, mask, build = toy
    loss = token_mean(nsr(build([1.0, -1.0, -1.0, 1.0])).loss, mask, 12, 4, 4)
    loss.backward()
    # A' = [0.1, -1, -1, 0.1]; reference 0.525603; row 0 gradient -0.1 * rho / 12 = -0.1 * [e^0.1, e^-0.1] / 12.
    assert loss.item() == pytest.approx(0.525603, abs=1e-6)
    assert logp.grad[0, :2].tolist() == pytest.approx([-0.1 * math.exp(0.1) / 12, -0.1 * math.exp(-0.1) / 12])


def test_opmd(toy):
    from mmrl.algorithms.aggregation import token_mean
    from mmrl.algorithms.losses import opmd

    logp, mask, build = toy
    loss = token_mean(opmd(build([0.5, -0.5, -0.5, 0.5]), tau=0.2).loss, mask, 12, 4, 4)
    loss.backward()
    # d/dlogp = (-A + tau (logp - old)) / 12: row 0 = (-0.5 + 0.2 * 0.1) / 12 = -0.04, (-0.5 - 0.02) / 12 = -0.043333.
    assert loss.item() == pytest.approx(-0.077917, abs=1e-6)
    assert logp.grad[0, :2].tolist() == pytest.approx([-0.04, -0.043333], abs=1e-6)


def test_asymre(toy):
    from mmrl.algorithms.aggregation import token_mean
    from mmrl.algorithms.losses import asymre

    logp, mask, build = toy
    loss = token_mean(asymre(build([0.5, -0.5, -0.5, 0.5])).loss, mask, 12, 4, 4)
    loss.backward()
    # -(A + 0.1) / 12: positives -0.6 / 12 = -0.05, negatives 0.4 / 12 = 0.033333.
    assert loss.item() == pytest.approx(-0.018333, abs=1e-6)
    assert logp.grad[0, :2].tolist() == pytest.approx([-0.05, -0.05])
    assert logp.grad[1, :4].tolist() == pytest.approx([0.033333] * 4, abs=1e-6)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_all_masked_sequence_contributes_nothing(make_batch, name):
    # Row 1 has no completion tokens (e.g. every token was a dropped placeholder): its loss and gradient must be
    # exactly 0 after masking, and nothing may turn NaN (GSPO's and TOPR's sequence ratios divide/sum over tokens).
    from mmrl.algorithms.aggregation import seq_mean_token_mean, token_mean

    g = torch.Generator().manual_seed(2)
    logp = (torch.randn(2, 4, generator=g) - 1).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(2, 4, generator=g)
    mask = torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0]])
    batch = make_batch(logp, old, torch.tensor([0.7, -1.3]), mask=mask, ref=old - 0.2, group_mean=torch.tensor([0.5, 0.5]),
                       positive_len=torch.tensor([3.0, 3.0]))
    loss = POLICY_LOSSES.get(name)(batch).loss
    for agg in (token_mean, seq_mean_token_mean):
        total = agg(loss, mask, 3, 2, 4)
        assert torch.isfinite(total)
    token_mean(loss, mask, 3, 2, 4).backward()
    assert torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[1], torch.zeros(4))


# ---------------------------------------------------------------- off-policy guidance (TempSamp-R1 ground-truth slot)


def test_offpolicy_guidance_uses_pi_theta_as_the_ratio_and_shapes_it():
    from mmrl.algorithms.losses import offpolicy_guidance

    # p = exp(logp) = [e^-1, e^-0.5, e^-2] = [0.367879, 0.606531, 0.135335], A = 2.
    # gamma = 0: loss = -A p = [-0.735759, -1.213061, -0.270671]; d loss / d logp = -A p.
    logp = torch.tensor([LOGP], requires_grad=True)
    loss = offpolicy_guidance(logp, torch.tensor([2.0]), gamma=0.0)
    assert loss[0].tolist() == pytest.approx([-0.735759, -1.213061, -0.270671], abs=1e-6)
    assert grad_of(loss, logp) == pytest.approx([-0.735759, -1.213061, -0.270671], abs=1e-6)
    # gamma = 0.1: f = p / (p + 0.1) = [0.786270, 0.858463, 0.575074]; loss = -2 f;
    # d f / d logp = p * 0.1 / (p + 0.1)^2 = [0.168050, 0.121504, 0.244364] -> gradient -2x that.
    logp = torch.tensor([LOGP], requires_grad=True)
    loss = offpolicy_guidance(logp, torch.tensor([2.0]), gamma=0.1)
    assert loss[0].tolist() == pytest.approx([-1.572539, -1.716927, -1.150149], abs=1e-5)
    assert grad_of(loss, logp) == pytest.approx([-0.336099, -0.243008, -0.488728], abs=1e-5)
