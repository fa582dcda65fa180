"""The GRPO-family members TRL and verl ship (SAPO, VESPO, LUSPO, two-sided clipping, OPSM, the KL importance
ratio, the entropy bonus and its adaptive coefficient; verl's GPG, OPO, GDPO, ReMax, Clip-Cov, KL-Cov) against numbers
computed by hand from their formulas (each section names where its formula comes from).

Shared example (as in test_losses.py): logp = [-1.0, -0.5, -2.0], old = [-1.2, -0.5, -1.5], so the token ratios are
rho = [e^0.2, 1, e^-0.5] = [1.221403, 1.0, 0.606531] and the sequence's mean log-ratio is -0.1.
"""
from __future__ import annotations

import pytest
import torch

from mmrl.algorithms import ADVANTAGES
from mmrl.algorithms.advantages import compute_advantages, gdpo, gpg, opo, remax
from mmrl.algorithms.aggregation import seq_mean_token_mean, seq_mean_token_sum
from mmrl.algorithms.entropy import AdaptiveEntropy, entropy_bonus
from mmrl.algorithms.kl import importance_weighted, k1, k3
from mmrl.algorithms.losses import cispo, clip_cov, gspo, kl_cov, ppo_clip, sapo, vespo
from mmrl.algorithms.token_weights import TokenBatch, opsm
from mmrl.errors import ConfigError
from test_losses import LOGP, OLD, example, grad_of



# ---------------------------------------------------------------- SAPO (arXiv 2511.20347; TRL and verl `sapo`)


def test_sapo_soft_gate_positive_advantage(make_batch):
    # f(rho) = 4 sigmoid(rho - 1) at tau_pos = 1: [2.220503, 2.0, 1.611530]; L = -f A with A = 1.
    # d L / d logp = -4 s (1 - s) rho, s = sigmoid(rho - 1): [-1.206556, -1.0, -0.583648]
    logp, old, adv = example(1.0)
    loss, clipped = sapo(make_batch(logp, old, adv))
    assert clipped is None
    assert loss[0].tolist() == pytest.approx([-2.220503, -2.0, -1.611530], abs=1e-6)
    assert grad_of(loss, logp) == pytest.approx([-1.206556, -1.0, -0.583648], abs=1e-6)


def test_sapo_negative_advantage_uses_tau_neg(make_batch):
    # tau_neg = 1.05: f = (4 / 1.05) sigmoid(1.05 (rho - 1)) = [2.125173, 1.904762, 1.516795]; L = +f (A = -1);
    # gradient 4 s (1 - s) rho: [1.205048, 1.0, 0.581368] — on-policy (rho = 1) exactly -A, as PPO.
    logp, old, adv = example(-1.0)
    loss = sapo(make_batch(logp, old, adv)).loss
    assert loss[0].tolist() == pytest.approx([2.125173, 1.904762, 1.516795], abs=1e-6)
    assert grad_of(loss, logp) == pytest.approx([1.205048, 1.0, 0.581368], abs=1e-6)


def test_sapo_sequence_level_gates_the_sequence_ratio(make_batch):
    # level sequence: every token sees s = e^-0.1 = 0.904837; f = 4 sigmoid(s - 1), gradient -4 s' (1 - s') s.
    logp, old, adv = example(1.0)
    loss = sapo(make_batch(logp, old, adv), level="sequence").loss
    s = torch.sigmoid(torch.tensor(0.904837 - 1)).item()
    assert loss[0].tolist() == pytest.approx([-4 * s] * 3, abs=1e-6)
    assert grad_of(loss, logp) == pytest.approx([-4 * s * (1 - s) * 0.904837] * 3, abs=1e-6)


# ---------------------------------------------------------------- VESPO (arXiv 2602.10693; TRL's get_gamma_weights)


@pytest.mark.parametrize(("adv", "phi"), [(1.0, 1.194282), (-1.0, 0.682743)])
def test_vespo_gamma_weight_of_the_sequence_ratio(make_batch, adv, phi):
    # w = exp(sum_t log rho_t) = e^-0.3. A >= 0 (k = 2, lambda = 3): phi = exp(3 - 0.6 - 3 e^-0.3) = 1.194282;
    # A < 0 (k = 3, lambda = 2): phi = exp(2 - 0.9 - 2 e^-0.3) = 0.682743. L = -phi A logp, gradient -phi A.
    logp, old, a = example(adv)
    loss = vespo(make_batch(logp, old, a)).loss
    assert loss[0].tolist() == pytest.approx([phi * adv * x * -1 for x in LOGP], abs=1e-5)
    assert grad_of(loss, logp) == pytest.approx([-phi * adv] * 3, abs=1e-5)


def test_vespo_on_policy_weight_is_one(make_batch):
    logp = torch.tensor([LOGP])
    loss = vespo(make_batch(logp, logp.clone(), torch.tensor([0.5]))).loss
    assert loss[0].tolist() == pytest.approx([0.5, 0.25, 1.0])  # phi(1) = e^(lambda + 0 - lambda) = 1


# ---------------------------------------------------------------- two-sided clipping (INTELLECT-2; TRL's delta)


def test_delta_caps_the_ratio_of_negative_advantages(make_batch):
    # rho = [e^1.5 = 4.481689, e^0.2, e^-0.5], A = -1, eps 0.2, delta 1.5:
    #   token 0: -min(min(4.48, 1.5)(-1), 1.2(-1)) = 1.5, gradient 0 (PPO alone: 4.4817)
    #   token 1: -min(-1.2214, -1.2) = 1.2214, gradient 1.2214; token 2: lower clip, 0.8, gradient 0
    logp = torch.tensor([[-1.0, -1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-2.5, -1.2, -1.5]])
    loss, clipped = ppo_clip(make_batch(logp, old, torch.tensor([-1.0])), delta=1.5)
    assert loss[0].tolist() == pytest.approx([1.5, 1.221403, 0.8], abs=1e-6)
    assert clipped[0].tolist() == [True, False, True]
    assert grad_of(loss, logp) == pytest.approx([0.0, 1.221403, 0.0], abs=1e-6)
    dual = ppo_clip(make_batch(logp.detach(), old, torch.tensor([-1.0])), dual_clip=1.5).loss
    assert torch.allclose(loss.detach(), dual)  # delta > 1 + eps_high: dual-clip PPO with c = delta


def test_delta_leaves_positive_advantages_alone_above_the_clip(make_batch):
    logp, old = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.5, -1.1]])
    with_delta = ppo_clip(make_batch(logp, old, torch.tensor([1.0])), delta=1.5).loss
    assert torch.equal(with_delta, ppo_clip(make_batch(logp, old, torch.tensor([1.0]))).loss)


def test_gspo_delta_caps_the_sequence_ratio(make_batch):
    # mean log-ratio 1.0 -> s = e = 2.718282 > delta = 1.5, A = -1: loss 1.5 per token (GSPO alone: e).
    logp, old = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.0, -2.0]])
    assert gspo(make_batch(logp, old, torch.tensor([-1.0])), delta=1.5).loss[0].tolist() == pytest.approx([1.5, 1.5])


# ---------------------------------------------------------------- CISPO at the sequence level; LUSPO aggregation


def test_cispo_sequence_level_weight(make_batch):
    # s = e^-0.1 = 0.904837 inside [0, 1.28]: L = -0.904837 A logp, gradient -0.904837 A on every token.
    logp, old, adv = example(2.0)
    loss, clipped = cispo(make_batch(logp, old, adv), level="sequence")
    assert not clipped.any()
    assert grad_of(loss, logp) == pytest.approx([-1.809675] * 3, abs=1e-6)


def test_seq_mean_token_sum_is_luspo_length_weighting():
    # token sums 1 + 2 = 3 and 4 + 5 + 6 = 15 over 2 sequences: 9. With a constant per-token loss l_i this is
    # mean_i |y_i| l_i, LUSPO's length-scaled sequence loss (seq_mean_token_mean would give mean_i l_i).
    loss, mask = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 1, 1]])
    assert seq_mean_token_sum(loss, mask, 5, 2, 3).item() == pytest.approx(9.0)
    constant = torch.tensor([[2.0, 2, 2], [3, 3, 3]])
    assert seq_mean_token_sum(constant, mask, 5, 2, 3).item() == pytest.approx((2 * 2 + 3 * 3) / 2)
    assert seq_mean_token_mean(constant, mask, 5, 2, 3).item() == pytest.approx((2 + 3) / 2)


# ---------------------------------------------------------------- Clip-Cov / KL-Cov (arXiv 2505.22617)
# The formulas of verl's compute_policy_loss_clip_cov and compute_policy_loss_kl_cov.


def cov_batch(make_batch, old_shift=None):
    """2 x 2 tokens, A = [2, -2]: centred A = [2, 2, -2, -2]; logp = [[-0.5, -2.5], [-1.5, -1.5]] (mean -1.5),
    centred [1, -1, 0, 0]; covariance (A - mean A)(logp - mean logp) = [[2, -2], [0, 0]]."""
    logp = torch.tensor([[-0.5, -2.5], [-1.5, -1.5]], requires_grad=True)
    old = logp.detach() - (old_shift if old_shift is not None else 0.0)
    return logp, make_batch(logp, old, torch.tensor([2.0, -2.0]))


def test_clip_cov_drops_the_gradient_of_high_covariance_tokens(make_batch):
    # On-policy nothing is PPO-clipped; only token (0, 0) has a covariance in (1, 5); ratio 0.25 of 4 tokens = 1
    # token is dropped: loss [[0, -2], [2, 2]], gradient [[0, -2], [2, 2]] (-A elsewhere).
    logp, batch = cov_batch(make_batch)
    loss, clipped = clip_cov(batch, ratio=0.25)
    assert loss.tolist() == [[0.0, -2.0], [2.0, 2.0]]
    assert clipped.tolist() == [[True, False], [False, False]]
    loss.sum().backward()
    assert logp.grad.tolist() == [[0.0, -2.0], [2.0, 2.0]]


def test_clip_cov_draws_at_most_its_share_of_candidates(make_batch):
    logp, batch = cov_batch(make_batch)
    _, clipped = clip_cov(batch, ratio=0.25, lower=-3.0)  # every token is a candidate, max(1, int(1)) dropped
    assert int(clipped.sum()) == 1


def test_kl_cov_pulls_the_top_covariance_token(make_batch):
    # log rho = [[0.1, 0.2], [0.3, -0.1]]; the top-1 covariance token (0, 0) gets + |log rho| = 0.1:
    # loss = -A rho (+ 0.1 at (0, 0)) = [[-2 e^0.1 + 0.1, -2 e^0.2], [2 e^0.3, 2 e^-0.1]]
    # gradient -A rho (+ sign(log rho) = 1 at (0, 0)) = [[-1.210342, -2.442806], [2.699718, 1.809675]]
    logp, batch = cov_batch(make_batch, torch.tensor([[0.1, 0.2], [0.3, -0.1]]))
    loss, pulled = kl_cov(batch, ratio=0.25)
    assert pulled.tolist() == [[True, False], [False, False]]
    assert loss.flatten().tolist() == pytest.approx([-2.110342, -2.442806, 2.699718, 1.809675], abs=1e-6)
    loss.sum().backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-1.210342, -2.442806, 2.699718, 1.809675], abs=1e-6)


# ---------------------------------------------------------------- KL importance ratio (DeepSeek-V3.2)


def test_kl_importance_ratio_values():
    # kl = [0.5, 0.2], log rho = [0.2, -0.5]: token -> [0.5 e^0.2, 0.2 e^-0.5] = [0.610701, 0.121306];
    # sequence -> both times e^-0.15: [0.430354, 0.172142]; off -> unchanged.
    kl, logp, old = torch.tensor([[0.5, 0.2]]), torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.2, -1.5]])
    mask = torch.ones(1, 2)
    token = importance_weighted(kl, logp, old, mask, "token")
    assert token[0].tolist() == pytest.approx([0.610701, 0.121306], abs=1e-6)
    assert importance_weighted(kl, logp, old, mask, "sequence")[0].tolist() == pytest.approx([0.430354, 0.172142],
                                                                                            abs=1e-6)
    assert torch.equal(importance_weighted(kl, logp, old, mask, "off"), kl)


def test_kl_importance_ratio_makes_the_on_policy_gradient_the_exact_one():
    # On-policy (rho = 1 in value): grad(rho k3) = k3 + (1 - e^d) = logp - ref, with d = ref - logp: the k1
    # estimator's score-function gradient, unbiased for grad KL; k3 alone gives 1 - e^d. logp = -1, ref = -1.5:
    # corrected 0.5, plain 1 - e^-0.5 = 0.393469.
    logp, ref = torch.tensor([[-1.0]], requires_grad=True), torch.tensor([[-1.5]])
    importance_weighted(k3(logp, ref), logp, logp.detach(), torch.ones(1, 1), "token").sum().backward()
    assert logp.grad.item() == pytest.approx(0.5)
    plain = torch.tensor([[-1.0]], requires_grad=True)
    k3(plain, ref).sum().backward()
    assert plain.grad.item() == pytest.approx(0.393469, abs=1e-6)
    assert k1(logp, ref).item() == pytest.approx(0.5)


# ---------------------------------------------------------------- OPSM (DeepSeek-V3.2, eq. 9)


def test_opsm_drops_drifted_negative_sequences_only():
    # Mean of (old - logp) over each sequence's tokens, threshold 0.3:
    #   row 0: A < 0, drift 0.5 -> dropped; row 1: A > 0, drift 0.5 -> kept; row 2: A < 0, drift 0.1 -> kept;
    #   row 3: A < 0, drift 0.2 over its one real token (the masked -2.0 is ignored) -> kept.
    log_ratio = torch.tensor([[-0.6, -0.4], [-0.6, -0.4], [-0.1, -0.1], [-0.2, -2.0]])
    mask = torch.tensor([[1.0, 1], [1, 1], [1, 1], [1, 0]])
    t = TokenBatch(ids=torch.zeros(4, 2, dtype=torch.long), mask=mask, entropy=None, group_ids=torch.zeros(4),
                   number_mask=torch.zeros(4, 2), log_ratio=log_ratio, advantages=torch.tensor([-1.0, 1, -1, -1]))
    assert opsm(t, threshold=0.3).tolist() == [[0.0, 0.0], [1, 1], [1, 1], [1, 0]]
    assert opsm(t, threshold=0.6)[0].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- entropy bonus, Skywork-OR1 controller (TRL's form)


def test_entropy_bonus_is_the_masked_token_mean():
    entropy, mask = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    assert entropy_bonus(entropy, mask, 0.1).item() == pytest.approx(0.1 * (1 + 2 + 3) / 3)


def test_adaptive_entropy_controller():
    c = AdaptiveEntropy(0.01, target=0.2, delta=0.005, coef_min=0.0, coef_max=0.012)
    assert c.applied() == 0.0  # no entropy measured yet: off (TRL starts from an infinite last entropy)
    c.update(0.1)  # below target: more bonus, capped at coef_max
    assert (c.coef, c.applied()) == (pytest.approx(0.012), pytest.approx(0.012))
    c.update(0.5)  # above target: less bonus, and off while entropy stays high
    assert (c.coef, c.applied()) == (pytest.approx(0.007), 0.0)
    c.update(0.6)
    c.update(0.7)
    assert c.coef == 0.0  # floored at coef_min
    assert c.state_dict()["last_entropy"] == 0.7


# ---------------------------------------------------------------- verl's advantage estimators


def groups(*sizes):
    return torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))


def test_gpg_rescales_by_the_share_of_nonzero_rewards():
    # verl compute_gpg_outcome_advantage (f_norm = 1): N = 8, M = 3 non-zero rewards, alpha = 8/3; group means
    # 0.25 and 0.5.
    adv = gpg(torch.tensor([1.0, 0, 0, 0, 0, 0, 1, 1]), groups(4, 4), {})
    assert adv.tolist() == pytest.approx([2, -2 / 3, -2 / 3, -2 / 3, -4 / 3, -4 / 3, 4 / 3, 4 / 3])


def test_opo_length_weighted_baseline():
    # verl compute_opo_outcome_advantage: group 0 rewards [1, 0, 1], lengths [2, 4, 6]: b = (2 + 0 + 6) / 12 = 2/3;
    # group 1 rewards [0, 1], lengths [1, 3]: b = 3/4.
    adv = opo(torch.tensor([1.0, 0, 1, 0, 1]), groups(3, 2), {}, torch.tensor([2, 4, 6, 1, 3]))
    assert adv.tolist() == pytest.approx([1 / 3, -2 / 3, 1 / 3, -3 / 4, 1 / 4])


def test_gdpo_normalises_each_component_then_the_batch():
    # GDPO (TRL normalize_then_sum): a = [1, 0 | 1, 1] -> [0.5, -0.5] / (sqrt(0.5) + 1e-4), [0, 0];
    # b = [0.5, 0.1 | 0.2, 0.6] -> ±0.2 / (sqrt(0.08) + 1e-4); s = a + 2 b = [2.120721, -2.120721, -1.413714,
    # 1.413714]; batch mean 0, unbiased std 2.081149: A = [1.019023, -1.019023, -0.679300, 0.679300].
    a, b = torch.tensor([1.0, 0, 1, 1]), torch.tensor([0.5, 0.1, 0.2, 0.6])
    adv = compute_advantages({"a": a, "b": b}, {"a": 1.0, "b": 2.0}, groups(2, 2), ADVANTAGES.get("gdpo"), "sum", {})
    assert adv.tolist() == pytest.approx([1.019023, -1.019023, -0.679300, 0.679300], abs=1e-5)
    direct = gdpo(a + 2 * b, groups(2, 2), {}, {"a": (1.0, a), "b": (2.0, b)})
    assert torch.allclose(adv, direct)


def test_compute_advantages_passes_lengths_only_to_estimators_that_read_them():
    r, g = torch.tensor([1.0, 0, 1]), groups(3)
    adv = compute_advantages({"r": r}, {"r": 1.0}, g, ADVANTAGES.get("opo"), "sum", {}, lengths=torch.tensor([2, 4, 6]))
    assert adv.tolist() == pytest.approx([1 / 3, -2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="needs the step's 'lengths'"):
        compute_advantages({"r": r}, {"r": 1.0}, g, ADVANTAGES.get("opo"), "sum", {})
    assert compute_advantages({"r": r}, {"r": 1.0}, g, ADVANTAGES.get("dr_grpo"), "sum", {},
                              lengths=torch.tensor([2, 4, 6])).tolist() == pytest.approx([1 / 3, -2 / 3, 1 / 3])


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(("yaml", "key"), [
    ("grpo:\n  kl_importance_ratio: always\n", "grpo.kl_importance_ratio"),
    ("grpo:\n  policy_loss: sapo\n  loss_args: {level: seq}\n", "grpo.loss_args.level"),
    ("grpo:\n  policy_loss: sapo\n  loss_args: {tau_pos: hot}\n", "grpo.loss_args.tau_pos"),
    ("grpo:\n  token_weights: {opsm: {threshold: high}}\n", "grpo.token_weights.opsm.threshold"),
])
def test_bad_values_name_the_key(tmp_path, yaml, key):
    from mmrl.algorithms import build_algorithm
    from mmrl.config import TrainConfig, load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_algorithm(load_config(TrainConfig, path).grpo)


def test_kl_importance_ratio_defaults_to_trl_s_default():
    from mmrl.config import GRPOConfig

    trl = pytest.importorskip("trl")
    assert (GRPOConfig().kl_importance_ratio == "token") == trl.GRPOConfig.__dataclass_fields__[
        "use_bias_correction_kl"].default


def test_remax_subtracts_the_greedy_reward():
    # ReMax Algorithm 1: group 0 samples [1, 0, 1] and greedy 1 -> [0, -1, 0]; group 1 samples [0.5, 0.2] and
    # greedy 0.3 -> [0.2, -0.1]; greedy rows get 0 (they are not trained on).
    rewards = torch.tensor([1.0, 0, 1, 0.5, 0.2, 1.0, 0.3])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 0, 1])
    keep = torch.tensor([True] * 5 + [False] * 2)
    adv = remax(rewards, group_ids, {}, keep)
    assert adv.tolist() == pytest.approx([0, -1, 0, 0.2, -0.1, 0, 0])
    with pytest.raises(ValueError, match="exactly one greedy completion per group"):
        remax(rewards, group_ids, {}, torch.ones(7, dtype=torch.bool))


def test_remax_rollout_adds_one_greedy_row_per_prompt():
    from mmrl.algorithms.sampling import GREEDY_TOP_P
    from mmrl.algorithms.sampling import remax as remax_rollout
    from mmrl.rollout.groups import Rollouts

    calls = []

    def draw(prompts, n, groups, **overrides):
        calls.append((n, groups, overrides))
        rows = [g for g in groups for _ in range(n)]
        return Rollouts(samples=[None] * len(rows), group_ids=torch.tensor(rows), ids=torch.zeros(len(rows), 2,
                        dtype=torch.long), mask=torch.ones(len(rows), 2), texts=[""] * len(rows),
                        truncated=torch.zeros(len(rows), dtype=torch.bool), components={}, total=torch.zeros(len(rows)))

    ro = remax_rollout(draw, ["a", "b"], 3, 4)
    assert calls == [(3, [4, 5], {}), (1, [4, 5], {"top_p": GREEDY_TOP_P})]
    assert ro.group_ids.tolist() == [4, 4, 4, 5, 5, 5, 4, 5] and ro.keep.tolist() == [True] * 6 + [False] * 2
