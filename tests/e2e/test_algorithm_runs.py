"""Every registered advantage estimator, policy loss, token weighting and sampling strategy drives a real (tiny)
GUI-grounding RL run: two steps each on the CPU, through ``mmrl.trainer.train``."""
from __future__ import annotations

import json
import math

import pytest

from mmrl.algorithms import ADVANTAGES, POLICY_LOSSES, TOKEN_WEIGHTS
from mmrl.config import TrainConfig, load_config
from mmrl.errors import ConfigError
from mmrl.trainer import train

pytestmark = pytest.mark.slow

FAST = ["eval.before_and_after=false", "log_rollouts=true"]


def run(tiny_run, *overrides) -> list[dict]:
    cfg = load_config(TrainConfig, None, tiny_run + FAST + list(overrides))
    train(cfg)
    rows = [json.loads(line) for line in open(f"{cfg.output_dir}/metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    return rows


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_each_advantage_estimator_trains(tiny_run, name):
    rows = run(tiny_run, f"grpo.advantage={name}", *(["grpo.rollout=remax"] if name == "remax" else []))
    assert any(r["grad_norm"] > 0 for r in rows), "no gradient reached the model"
    if name == "remax":  # 2 prompts x (4 samples + 1 greedy baseline) scored, the samples alone trained on
        assert all(r["rollouts/sampled"] == 2 * 5 and r["rollouts/trained"] == 2 * 4 for r in rows)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_each_policy_loss_trains(tiny_run, name):
    overrides = [f"grpo.policy_loss={name}", "grpo.mu=2"]  # mu = 2: ratios move off 1 in the second epoch
    if name == "gspo":
        overrides.append("grpo.loss_agg=seq_mean_token_mean")
    rows = run(tiny_run, *overrides)
    assert any(r["grad_norm"] > 0 for r in rows)


def test_luspo_aggregation_trains(tiny_run):
    rows = run(tiny_run, "grpo.policy_loss=gspo", "grpo.loss_agg=seq_mean_token_sum", "grpo.mu=2")
    assert any(r["grad_norm"] > 0 for r in rows)


@pytest.mark.parametrize("name", TOKEN_WEIGHTS.names())
def test_each_token_weighting_trains(tiny_run, name):
    run(tiny_run, f"grpo.token_weights={{{name}: {{}}}}")


def test_kl_with_the_sequence_importance_ratio(tiny_run):
    rows = run(tiny_run, "grpo.beta=0.1", "grpo.kl_importance_ratio=sequence", "grpo.mu=2")
    assert rows[1]["kl"] != 0.0


def test_kl_in_reward_adds_the_penalty_component(tiny_run):
    rows = run(tiny_run, "grpo.beta=0.1", "grpo.kl_in=reward", "grpo.mu=2")
    assert all("reward/kl_penalty" in r and r["reward/kl_penalty"] <= 0 for r in rows)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "low_var_kl"])
def test_each_kl_estimator_in_the_loss(tiny_run, estimator):
    rows = run(tiny_run, "grpo.beta=0.1", f"grpo.kl_estimator={estimator}", "grpo.mu=2")
    assert rows[1]["kl"] != 0.0  # after one update the policy has moved off the reference


def test_entropy_bonus_is_subtracted_over_the_whole_batch(tiny_run, hf_sampling):
    """Step 1 from the same weights and rollouts with and without ``entropy_coef``: two micro-batches of 4, each
    bonus over the batch's token count, so the logged loss is the plain loss minus ``coef`` times the batch's
    mean token entropy (one rank: the same mean ``entropy/mean`` logs)."""
    plain = run([o.replace("/run", "/plain") for o in tiny_run], "grpo.mu=1")
    rows = run([o.replace("/run", "/bonus") for o in tiny_run], "grpo.mu=1", "grpo.entropy_coef=0.5")
    assert "entropy/coef" not in plain[0]
    assert [r["entropy/coef"] for r in rows] == [0.5, 0.5]
    assert rows[0]["entropy/mean"] > 0.1  # a tiny model is far from deterministic: the check below can fail
    assert rows[0]["loss"] == pytest.approx(plain[0]["loss"] - 0.5 * rows[0]["entropy/mean"], abs=1e-6)
    assert rows[0]["grad_norm"] != pytest.approx(plain[0]["grad_norm"], rel=1e-4)  # the bonus has a gradient


@pytest.mark.parametrize("target, coefs", [(100.0, [0.02, 0.03]), (0.0, [0.0, 0.0])], ids=["below", "above"])
def test_adaptive_entropy_coefficient_moves_each_optimizer_step(tiny_run, target, coefs):
    """Skywork-OR1's controller, two optimizer steps (``mu``) per RL step from 0.01 by 0.005: every measured
    entropy is at or below a target of 100 nats (up each step), above a target of 0 (down, floored at 0)."""
    rows = run(tiny_run, "grpo.mu=2", "grpo.adaptive_entropy=true", "grpo.entropy_coef=0.01",
               f"grpo.entropy_target={target}", "grpo.entropy_coef_delta=0.005")
    assert [r["entropy/coef"] for r in rows] == pytest.approx(coefs)
    assert all(r["entropy/mean"] > 0 for r in rows)


def test_resume_restores_the_adaptive_entropy_coefficient(tiny_run, tmp_path):
    """4 steps straight vs. killed after step 3 (last checkpoint: step 2) and resumed: bit-identical weights and
    the same coefficients. Without the controller's state the resumed run would start again from 0.01 with no
    bonus until an entropy was measured."""
    from e2e.test_train import assert_same_trained_weights, run as run_to_end, straight_then_crashed

    crashed = straight_then_crashed(tiny_run, tmp_path, ["grpo.steps=4", "save_every=2", "grpo.mu=2", "grpo.lr=1e-3",
                                                         "grpo.adaptive_entropy=true", "grpo.entropy_coef=0.01",
                                                         "grpo.entropy_target=100", *FAST])
    run_to_end(crashed + ["resume=true"])
    assert_same_trained_weights(tmp_path)
    coefs = [[json.loads(x)["entropy/coef"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
             for d in "ab"]
    assert coefs[0] == coefs[1] == pytest.approx([0.02, 0.03, 0.04, 0.05])


def test_entropy_coefficient_bounds_are_checked(tiny_run):
    with pytest.raises(ConfigError, match="grpo.entropy_coef_min=0.5 must be at most grpo.entropy_coef_max=0.1"):
        run(tiny_run, "grpo.adaptive_entropy=true", "grpo.entropy_coef_min=0.5", "grpo.entropy_coef_max=0.1")
    with pytest.raises(ConfigError, match="grpo.entropy_coef_delta"):
        load_config(TrainConfig, None, tiny_run + ["grpo.entropy_coef_delta=-1"])


def test_dynamic_sampling_refill_and_overlong_filter(tiny_run):
    rows = run(tiny_run, "grpo.dynamic_sampling=refill", "grpo.overlong_filter=true", "grpo.max_refill_rounds=2")
    assert all(0.0 <= r["trained/frac"] <= 1.0 for r in rows)


def test_per_component_advantages(tiny_run):
    run(tiny_run, "grpo.reward_combine=per_component", "grpo.advantage=bnpo")


def test_variance_aware_prompt_sampling(tiny_run):
    run(tiny_run, "grpo.prompt_sampler=vas", "grpo.prompt_sampler_args={mix: 0.8}")


def test_reinforce_ada_samples_more_than_it_trains_on(tiny_run):
    # threshold 2.0 is above any reward (point + format <= 2), so no prompt ever finishes early: every prompt
    # gets max_rounds * per_round = 6 completions, of which group_size = 4 are trained on.
    rows = run(tiny_run, "grpo.rollout=reinforce_ada", "grpo.rollout_args={per_round: 3, max_rounds: 2, threshold: 2.0}")
    assert all(r["rollouts/sampled"] == 2 * 6 and r["rollouts/trained"] == 2 * 4 for r in rows)


def test_select_then_train_with_the_curriculum(tiny_run, tmp_path):
    from mmrl.selection import select

    cfg = load_config(TrainConfig, None, tiny_run)
    rows = select(cfg, k=3, output=tmp_path / "stats.jsonl", progress=False)
    assert [r["index"] for r in rows] == list(range(16)) and all(len(r["rewards"]) == 3 for r in rows)
    assert all(r["std"] >= 0 and 0 <= r["mean"] <= 2 for r in rows)
    run(tiny_run, "grpo.prompt_sampler=curriculum", f"grpo.prompt_sampler_args={{stats: {tmp_path / 'stats.jsonl'}, min_std: -1}}")


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kv-cache", "checkpointing-packed"])
def test_shared_prefix_and_full_sequences_give_the_same_first_step(tiny_run, checkpointing, hf_sampling):
    """Step 1 starts from the same weights and rollouts (``hf_sampling``), so its loss and gradient norm must agree
    (fp32); under gradient checkpointing the shared prefix runs as packed groups."""
    both = [f"model.gradient_checkpointing={str(checkpointing).lower()}", "grpo.mu=2"]
    shared = run([o.replace("/run", "/shared") for o in tiny_run], "grpo.shared_prefix=shared", *both)
    full = run([o.replace("/run", "/full") for o in tiny_run], "grpo.shared_prefix=full", *both)
    assert shared[0]["loss"] == pytest.approx(full[0]["loss"], rel=1e-4, abs=1e-6)
    assert shared[0]["grad_norm"] == pytest.approx(full[0]["grad_norm"], rel=1e-4)


def test_shared_prefix_falls_back_with_a_notice_when_it_cannot_run(tiny_run, capsys):
    checkpointed_eager = ["model.gradient_checkpointing=true", "model.attn_implementation=eager"]
    run(tiny_run, *checkpointed_eager)
    assert "shared-prefix log-probs off (gradient checkpointing turns the KV cache off" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="grpo.shared_prefix=shared is not possible"):
        run(tiny_run, *checkpointed_eager, "grpo.shared_prefix=shared", "overwrite=true")
