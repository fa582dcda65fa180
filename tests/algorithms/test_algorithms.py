"""Tests for mmrl.algorithms: advantages, policy losses, KL estimators, aggregation, registries.

Every expected number is worked out by hand in the comment beside it.
"""
from __future__ import annotations

import math

import pytest
import torch

from mmrl.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from mmrl.algorithms.advantages import dr_grpo, grpo, rloo
from mmrl.algorithms.aggregation import seq_mean_token_mean, seq_mean_token_sum_norm, token_mean
from mmrl.algorithms.kl import k1, k2, k3
from mmrl.algorithms.losses import ppo_clip
from mmrl.plugins import Registry
from mmrl.errors import ConfigError


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def ids(*values):
    return torch.tensor(values, dtype=torch.long)


# ---------------------------------------------------------------- advantages


def test_grpo_one_group():
    # mean = 2/4 = 0.5; deviations ±0.5; unbiased var = 4 * 0.25 / (4 - 1) = 1/3; std = sqrt(1/3) = 0.57735.
    # A = ±0.5 / 0.57735 = ±0.86603 (eps = 1e-6 moves the 6th decimal at most).
    adv = grpo(t(1, 0, 0, 1), ids(0, 0, 0, 0), {})
    assert torch.allclose(adv, t(0.86603, -0.86603, -0.86603, 0.86603), atol=1e-5)


def test_grpo_uses_unbiased_std_not_population_std():
    # With the population std (0.5) the advantages would be ±1.0, not ±0.866.
    adv = grpo(t(1, 0, 0, 1), ids(0, 0, 0, 0), {})
    assert not torch.allclose(adv.abs(), torch.ones(4), atol=1e-2)


def test_grpo_two_interleaved_groups():
    # Group 5: rewards 1, 2, 3 -> mean 2, unbiased var = (1 + 0 + 1) / 2 = 1 -> A = -1, 0, +1.
    # Group 2: rewards 0, 4 -> mean 2, unbiased var = (4 + 4) / 1 = 8, std = 2.8284 -> A = ∓2/2.8284 = ∓0.70711.
    adv = grpo(t(1, 0, 2, 4, 3), ids(5, 2, 5, 2, 5), {})
    assert torch.allclose(adv, t(-1.0, -0.70711, 0.0, 0.70711, 1.0), atol=1e-5)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.3, 0.7, 2.2])
@pytest.mark.parametrize("size", [2, 7, 8, 16])
def test_constant_group_has_zero_advantage(value, size):
    # mean = value, r - mean = 0, std = 0: A = 0 / (0 + eps) = 0 exactly, never NaN. Values such as 0.7 are not
    # exact in float32; a float32 mean of eight of them misses by an ulp, which (r - mean)/(std + eps) would blow
    # up to ~0.06 (and ~0.19 for sixteen 2.2s), every completion pushed the same way.
    rewards = torch.full((size,), value)
    groups = torch.zeros(size, dtype=torch.long)
    for fn in (grpo, dr_grpo, rloo):
        adv = fn(rewards, groups, {})
        assert not torch.isnan(adv).any()
        assert torch.equal(adv, torch.zeros(size)), (fn.__name__, adv)


def test_constant_group_next_to_a_varying_group():
    # Group 0 constant (0.5, 0.5) -> 0, 0. Group 1: 0, 1 -> mean 0.5, std = sqrt(0.5) = 0.70711 -> ∓0.70711.
    adv = grpo(t(0.5, 0, 0.5, 1), ids(0, 1, 0, 1), {})
    assert torch.allclose(adv, t(0, -0.70711, 0, 0.70711), atol=1e-5)


def test_advantages_keep_dtype():
    assert grpo(t(1, 0, dtype=torch.float64), ids(0, 0), {}).dtype == torch.float64
    assert grpo(t(1, 0), ids(0, 0), {}).dtype == torch.float32


def test_dr_grpo_drops_the_std():
    # Group 0: 1, 0, 0, 1 -> mean 0.5 -> ±0.5. Group 1: 3, 7 -> mean 5 -> -2, +2 (GRPO would give ∓0.70711).
    adv = dr_grpo(t(1, 0, 0, 1, 3, 7), ids(0, 0, 0, 0, 1, 1), {})
    assert torch.allclose(adv, t(0.5, -0.5, -0.5, 0.5, -2, 2), atol=1e-6)


def test_rloo_subtracts_the_mean_of_the_others():
    # Group 0: 3, 1, 2. 3 - (1+2)/2 = 1.5; 1 - (3+2)/2 = -1.5; 2 - (3+1)/2 = 0.
    # Group 1: 1, 0, 0, 1. 1 - (0+0+1)/3 = 0.66667; 0 - (1+0+1)/3 = -0.66667.
    adv = rloo(t(3, 1, 1, 0, 2, 0, 1), ids(0, 0, 1, 1, 0, 1, 1), {})
    expected = t(1.5, -1.5, 0.66667, -0.66667, 0.0, -0.66667, 0.66667)
    assert torch.allclose(adv, expected, atol=1e-5)


# ---------------------------------------------------------------- PPO clip


def test_ppo_clip_asymmetric_bounds(make_batch):
    eps_low, eps_high = 0.2, 0.28  # ratio clipped to [0.8, 1.28]
    ratios = t(1.1, 1.25, 1.5, 0.85, 0.5)
    logp = torch.log(ratios).repeat(2, 1).requires_grad_()
    old = torch.zeros(2, 5)
    adv = t(2.0, -2.0)
    loss, clipped = ppo_clip(make_batch(logp, old, adv), eps_low=eps_low, eps_high=eps_high)
    expected = torch.tensor(
        [
            # A = +2: -min(rho*A, clip(rho)*A)
            #   1.1  inside:               -min(2.2, 2.2)          = -2.2
            #   1.25 inside (1.25 < 1.28): -min(2.5, 2.5)          = -2.5  (a symmetric 0.2 would give -2.4)
            #   1.5  above 1.28:           -min(3.0, 1.28*2=2.56)  = -2.56 (clipped)
            #   0.85 inside:               -min(1.7, 1.7)          = -1.7
            #   0.5  below 0.8:            -min(1.0, 0.8*2=1.6)    = -1.0  (pessimistic side: not clipped)
            [-2.2, -2.5, -2.56, -1.7, -1.0],
            # A = -2:
            #   1.1:  -min(-2.2, -2.2)  = 2.2
            #   1.25: -min(-2.5, -2.5)  = 2.5
            #   1.5:  -min(-3.0, -2.56) = 3.0  (pessimistic side: not clipped)
            #   0.85: -min(-1.7, -1.7)  = 1.7
            #   0.5:  -min(-1.0, -1.6)  = 1.6  (clipped at 0.8)
            [2.2, 2.5, 3.0, 1.7, 1.6],
        ]
    )
    assert torch.allclose(loss, expected, atol=1e-5)
    # Exactly the tokens whose clipped branch is active have zero gradient.
    assert clipped.tolist() == [[False, False, True, False, False], [False, False, False, False, True]]
    # d/dlogp of -rho*A is -rho*A (rho = e^(logp - old)); a clipped token has zero gradient.
    loss.sum().backward()
    expected_grad = torch.tensor([[-2.2, -2.5, 0.0, -1.7, -1.0], [2.2, 2.5, 3.0, 1.7, 0.0]])
    assert torch.allclose(logp.grad, expected_grad, atol=1e-5)


def test_ppo_clip_at_ratio_one_is_minus_advantage(make_batch):
    # On-policy (mu = 1): rho = 1, loss = -A for every token; the gradient is -A too.
    logp = torch.full((2, 3), -1.7, requires_grad=True)
    loss = ppo_clip(make_batch(logp, logp.detach(), t(0.5, -3.0))).loss
    assert torch.allclose(loss, t(-0.5, 3.0)[:, None].expand(2, 3))
    loss.sum().backward()
    assert torch.allclose(logp.grad, t(-0.5, 3.0)[:, None].expand(2, 3))


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_at_a_pair():
    # logp = -1.0, ref = -1.5: d = ref - logp = -0.5.
    #   k1 = logp - ref = 0.5;  k2 = 0.5 * 0.5^2 = 0.125;  k3 = e^-0.5 + 0.5 - 1 = 0.60653 - 0.5 = 0.10653.
    # logp = -2.0, ref = -1.0: d = 1.
    #   k1 = -1;  k2 = 0.5;  k3 = e - 1 - 1 = 0.71828.
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.0)
    assert torch.allclose(k1(logp, ref), t(0.5, -1.0))
    assert torch.allclose(k2(logp, ref), t(0.125, 0.5))
    assert torch.allclose(k3(logp, ref), t(0.10653, 0.71828), atol=1e-5)


def test_k3_is_nonnegative_and_zero_at_equality():
    grid = torch.linspace(-8, 0, 41)
    logp, ref = torch.meshgrid(grid, grid, indexing="ij")
    kl = k3(logp, ref)
    assert (kl >= 0).all()
    assert torch.equal(k3(grid, grid), torch.zeros_like(grid))
    assert (kl[logp != ref] > 0).all()


def test_k1_and_k3_are_unbiased_under_the_policy():
    # pi = (1/2, 1/4, 1/4), ref = (1/4, 1/2, 1/4).
    # KL(pi || ref) = 1/2 ln 2 + 1/4 ln(1/2) + 1/4 ln 1 = 1/4 ln 2 = 0.17329.
    # E_pi[k3] = E_pi[ref/pi] - E_pi[ln(ref/pi)] - 1 = 1 + KL - 1 = KL; E_pi[k1] = KL by definition.
    pi, ref = t(0.5, 0.25, 0.25, dtype=torch.float64), t(0.25, 0.5, 0.25, dtype=torch.float64)
    kl = 0.25 * math.log(2)
    for fn in (k1, k3):
        assert (pi * fn(pi.log(), ref.log())).sum().item() == pytest.approx(kl, abs=1e-12)
    # k2 is biased: E[k2] = 0.5 * (1/2 ln2^2 + 1/4 ln2^2) = 0.375 * 0.48045 = 0.18017.
    assert (pi * k2(pi.log(), ref.log())).sum().item() == pytest.approx(0.375 * math.log(2) ** 2, abs=1e-12)


# ---------------------------------------------------------------- aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
# 3 unmasked tokens (1, 2 | 4), 2 sequences, max_len 3.


def test_token_mean():
    # (1 + 2 + 4) / 3 = 2.33333
    assert token_mean(LOSS, MASK, 3, 2, 3).item() == pytest.approx(7 / 3)


def test_seq_mean_token_mean():
    # row 0: (1 + 2) / 2 = 1.5; row 1: 4 / 1 = 4; mean over rows = 2.75
    assert seq_mean_token_mean(LOSS, MASK, 3, 2, 3).item() == pytest.approx(2.75)


def test_seq_mean_token_sum_norm():
    # row sums 3 and 4, each divided by max_len 3, mean over 2 rows: (3 + 4) / (3 * 2) = 1.16667
    assert seq_mean_token_sum_norm(LOSS, MASK, 3, 2, 3).item() == pytest.approx(7 / 6)


def test_fully_masked_row_counts_zero():
    # A row with no tokens contributes 0 (no division by zero); seq_mean_token_mean: (1.5 + 0) / 2 = 0.75.
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert seq_mean_token_mean(LOSS, mask, 2, 2, 3).item() == pytest.approx(0.75)
    assert token_mean(LOSS, mask, 2, 2, 3).item() == pytest.approx(1.5)


@pytest.mark.parametrize("name", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_sum_to_the_full_batch(name):
    fn = AGGREGATIONS.get(name)
    full = fn(LOSS, MASK, 3, 2, 3)
    # Split row by row; n_tokens = 3 and n_seqs = 2 stay batch-wide in both halves.
    # token_mean: 3/3 + 4/3 = 7/3; seq_mean_token_mean: 1.5/2 + 4/2 = 2.75; sum_norm: 3/6 + 4/6 = 7/6.
    parts = fn(LOSS[:1], MASK[:1], 3, 2, 3) + fn(LOSS[1:], MASK[1:], 3, 2, 3)
    assert parts.item() == pytest.approx(full.item())


def test_token_mean_with_micro_batch_local_counts_would_differ():
    # Guard that the micro-batch test above can fail: dividing by each half's own token count gives
    # (1 + 2)/2 + 4/1 = 5.5, not 7/3.
    local = token_mean(LOSS[:1], MASK[:1], 2, 1, 3) + token_mean(LOSS[1:], MASK[1:], 1, 1, 3)
    assert local.item() == pytest.approx(5.5)
    assert local.item() != pytest.approx(token_mean(LOSS, MASK, 3, 2, 3).item())


# ---------------------------------------------------------------- registries


@pytest.mark.parametrize(
    ("registry", "names"),
    [
        (ADVANTAGES, ["dr_grpo", "grpo", "rloo"]),
        (POLICY_LOSSES, ["ppo_clip"]),
        (KL_ESTIMATORS, ["k1", "k2", "k3"]),
        (AGGREGATIONS, ["seq_mean_token_mean", "seq_mean_token_sum_norm", "token_mean"]),
    ],
)
def test_registry_unknown_name_lists_valid_ones(registry, names):
    for name in names:
        assert name in registry.names()
    with pytest.raises(ConfigError) as e:
        registry.get("nope")
    msg = str(e.value)
    assert "'nope'" in msg and registry.kind in msg
    for name in registry.names():
        assert name in msg


def test_registry_get_returns_the_registered_function():
    assert ADVANTAGES.get("grpo") is grpo
    assert POLICY_LOSSES.get("ppo_clip") is ppo_clip
    assert KL_ESTIMATORS.get("k3") is k3
    assert AGGREGATIONS.get("token_mean") is token_mean


def test_registry_rejects_a_duplicate_name():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="'a'"):
        reg.register("a")(lambda: 2)


# ---------------------------------------------------------------- names and hyperparameters from YAML


def _yaml_config(tmp_path, text: str):
    from mmrl.config import TrainConfig, load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(TrainConfig, path)


def _registries():
    from mmrl.algorithms import PROMPT_SAMPLERS, ROLLOUTS, TOKEN_WEIGHTS

    return [("advantage", ADVANTAGES), ("policy_loss", POLICY_LOSSES), ("kl_estimator", KL_ESTIMATORS),
            ("loss_agg", AGGREGATIONS), ("prompt_sampler", PROMPT_SAMPLERS), ("rollout", ROLLOUTS),
            ("token_weights", TOKEN_WEIGHTS)]


def _setting(key: str, name: str) -> str:
    if name == "remax":  # the ReMax estimator and rollout go together
        return "advantage: remax\n  rollout: remax"
    return f"{key}: {{{name}: {{}}}}" if key == "token_weights" else f"{key}: {name}"


@pytest.mark.parametrize(("key", "registry"), _registries(), ids=[k for k, _ in _registries()])
def test_every_registered_name_is_selectable_from_yaml(tmp_path, key, registry):
    from mmrl.algorithms import build_algorithm

    for name in registry.names():
        cfg = _yaml_config(tmp_path, f"grpo:\n  {_setting(key, name)}\n")
        algo = build_algorithm(cfg.grpo)
        bound = {"advantage": algo.advantage, "policy_loss": algo.policy_loss, "kl_estimator": algo.kl,
                 "loss_agg": algo.aggregate, "prompt_sampler": algo.prompt_sampler, "rollout": algo.rollout,
                 "token_weights": algo.token_weights[0] if algo.token_weights else None}[key]
        assert bound.func is registry.get(name)
    cfg = _yaml_config(tmp_path, f"grpo:\n  {_setting(key, 'nope')}\n")
    with pytest.raises(ConfigError) as e:
        build_algorithm(cfg.grpo)
    for name in registry.names():
        assert name in str(e.value)


def test_hyperparameters_from_yaml_are_checked(tmp_path):
    from mmrl.algorithms import build_algorithm

    cfg = _yaml_config(tmp_path, "grpo:\n  policy_loss: ppo_clip\n  loss_args: {eps_low: 0.1, dual_clip: 3}\n")
    fn = build_algorithm(cfg.grpo).policy_loss
    assert fn.keywords == {"eps_low": 0.1, "dual_clip": 3.0}
    cfg = _yaml_config(tmp_path, "grpo:\n  loss_args: {eps_lo: 0.1}\n")
    with pytest.raises(ConfigError, match=r"'grpo.loss_args.eps_lo'.*valid: eps_low, eps_high, dual_clip"):
        build_algorithm(cfg.grpo)
    cfg = _yaml_config(tmp_path, "grpo:\n  advantage: tempsamp\n  advantage_args: {tau: high}\n")
    with pytest.raises(ConfigError, match="grpo.advantage_args.tau"):
        build_algorithm(cfg.grpo)


@pytest.mark.parametrize(("yaml", "message"), [
    ("grpo:\n  group_size: 1\n", "grpo.group_size"),
    ("grpo:\n  kl_in: both\n", "grpo.kl_in"),
    ("grpo:\n  dynamic_sampling: maybe\n", "grpo.dynamic_sampling"),
    ("grpo:\n  token_weights: {tw_grpo: {}}\n  group_size: 4\n  micro_batch_size: 6\n", "multiple of grpo.group_size"),
    ("grpo:\n  rollout: reinforce_ada\n  kl_in: reward\n  beta: 0.1\n", "reinforce_ada"),
    ("grpo:\n  advantage: remax\n", "go together"),
    ("grpo:\n  rollout: remax\n", "go together"),
])
def test_inconsistent_settings_are_rejected(tmp_path, yaml, message):
    from mmrl.algorithms import build_algorithm

    with pytest.raises(ConfigError, match=message):
        build_algorithm(_yaml_config(tmp_path, yaml).grpo)
