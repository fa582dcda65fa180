"""Token weights, DAPO filtering, Variance-Aware Sampling and Reinforce-Ada on hand-made inputs."""
from __future__ import annotations

import pytest
import torch

from mmrl.algorithms.sampling import (
    ada_done, ada_keep, informative_groups, outcome_variance, reinforce_ada, row_weights, trajectory_diversity, vas,
)
from mmrl.algorithms.token_weights import TokenBatch, entropy_top, precision, tw_grpo
from mmrl.rollout.groups import Rollouts


def tokens(mask, **kw) -> TokenBatch:
    mask = torch.tensor(mask, dtype=torch.float32)
    defaults = dict(ids=torch.zeros(mask.shape, dtype=torch.long), mask=mask, entropy=None,
                    group_ids=torch.zeros(len(mask), dtype=torch.long), number_mask=torch.zeros_like(mask))
    return TokenBatch(**{**defaults, **kw})


# ---------------------------------------------------------------- token weights


def test_tw_grpo_weights_follow_intra_group_variation():
    # G = 3, V = 3. Position 0: identical distributions -> D = 0 -> w = 1. Completion 2 ends before position 3,
    # whose distribution is then uniform. D_t = [0, 1.0862, 0.1944, 0.8979] (mean over i of sum_v e^d - d - 1),
    # min-max -> [0, 1, 0.1790, 0.8267], w = 1 + 0.7 n = [1, 1.7, 1.1253, 1.5787] (the authors' code gives the same).
    logits = torch.tensor([[[5., 0, 0], [2, 1, 0], [0, 0, 5], [3, 0, 0]],
                           [[5., 0, 0], [0, 2, 1], [0, 0, 4], [3, 0, 0]],
                           [[5., 0, 0], [1, 0, 2], [0, 0, 5], [9, 9, 9]]])
    mask = [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]
    w = tw_grpo(tokens(mask, log_dist=torch.log_softmax(logits, -1)), alpha=1.7)
    assert w[0].tolist() == pytest.approx([1.0, 1.7, 1.1253, 1.5787], abs=1e-4)
    assert w[2].tolist() == pytest.approx([1.0, 1.7, 1.1253, 0.0], abs=1e-4)


def test_tw_grpo_groups_are_independent():
    # Two groups: identical completions within each -> no variation -> all weights 1 (not normalised across groups).
    logits = torch.randn(1, 3, 5).repeat(4, 1, 1)
    batch = tokens([[1, 1, 1]] * 4, log_dist=torch.log_softmax(logits, -1), group_ids=torch.tensor([0, 0, 1, 1]))
    assert torch.equal(tw_grpo(batch), torch.ones(4, 3))


def test_entropy_top_keeps_the_top_fifth():
    # Valid entropies [0.01, 2.3, 0.05, 0.9, 0.0, 0.7, 0.02, 1.5]: the 0.8 quantile (linear interpolation) is
    # sorted[5.6] = 0.9 + 0.6 * (1.5 - 0.9) = 1.26, so only 2.3 and 1.5 are kept.
    h = torch.tensor([[0.01, 2.3, 0.05, 0.9, 0.0], [0.7, 0.02, 1.5, 0.0, 0.0]])
    w = entropy_top(tokens([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], entropy=h), fraction=0.2)
    assert w.tolist() == [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]


def test_precision_weights_number_tokens():
    batch = tokens([[1, 1, 1, 0]], number_mask=torch.tensor([[0.0, 1, 1, 1]]))
    assert precision(batch, weight=3.0).tolist() == [[1.0, 3.0, 3.0, 0.0]]


# ---------------------------------------------------------------- DAPO dynamic sampling and overlong filtering


def test_informative_groups_and_row_weights():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.3])
    gids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert informative_groups(rewards, gids) == [1, 3]  # groups 0 and 2 are constant
    truncated = torch.tensor([False, False, False, True, False, False, False, False])
    assert row_weights(gids, truncated, [1, 3], "off", False, limit=4).tolist() == [1.0] * 8
    assert row_weights(gids, truncated, [1, 3], "drop", False, limit=4).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert row_weights(gids, truncated, [1, 3], "refill", True, limit=1).tolist() == [0, 0, 1, 0, 0, 0, 0, 0]


# ---------------------------------------------------------------- MMR1 Variance-Aware Sampling


def test_variance_promotion_score_and_probabilities():
    # OVS of [1, 0, 1, 0] = 0.25; of [1, 1, 1, 1] = 0. TDS of 4 completions with 3 distinct = (3 - 1)/(4 - 1).
    assert outcome_variance([1, 0, 1, 0]) == 0.25 and outcome_variance([1, 1, 1, 1]) == 0.0
    assert trajectory_diversity(["a", "b", "c", "a"]) == pytest.approx(2 / 3)
    assert trajectory_diversity(["a", "a"]) == 0.0
    sampler = vas(4, seed=0, alpha=1.0, beta=1.0, mix=0.5, initial=0.5)
    sampler.update([(0, [1, 0, 1, 0], ["a", "b", "c", "d"]),   # VPS 0.25 + 1 = 1.25
                    (1, [1, 1, 1, 1], ["a", "a", "a", "a"])])  # VPS 0 + 0 = 0
    # Items 2 and 3 unseen: 0.5 each. Sum 2.25. P = 0.5 * VPS / 2.25 + 0.5 / 4.
    expected = [0.5 * 1.25 / 2.25 + 0.125, 0.125, 0.5 * 0.5 / 2.25 + 0.125, 0.5 * 0.5 / 2.25 + 0.125]
    assert sampler.probabilities().tolist() == pytest.approx(expected)


def test_vas_draws_are_seeded_distinct_and_resumable():
    a, b = vas(50, seed=3), vas(50, seed=3)
    first = a.draw(8)
    assert len(set(first)) == 8 and first == b.draw(8)
    a.update([(i, [0.0, 1.0], ["x", "y"]) for i in first])
    b.load_state_dict(a.state_dict())
    assert a.draw(8) == b.draw(8)


def test_vas_prefers_informative_prompts():
    sampler = vas(10, seed=0, mix=0.9)
    sampler.update([(i, [1.0] * 4, ["same"] * 4) for i in range(9)])  # solved, no diversity: VPS 0
    counts = sum(9 in sampler.draw(1) for _ in range(200))
    # P(item 9) = 0.9 * 0.5 / 0.5 + 0.1 / 10 = 0.91: drawn in ~182 of 200 single draws.
    assert counts > 160


# ---------------------------------------------------------------- Reinforce-Ada


def test_ada_stopping_rule():
    assert ada_done([1.0, 0.0, 1.0, 0.0], 4, 0.5, balanced=True)
    assert not ada_done([1.0, 1.0, 1.0, 0.0], 4, 0.5, balanced=True)  # needs 2 negatives for n = 4
    assert ada_done([0.0, 0.0, 1.0], 4, 0.5, balanced=False)  # positive-focused: one positive suffices


def test_ada_keep_balances_in_generation_order():
    # positives at 1, 4, 5; negatives at 0, 2, 3: n = 4 -> positives 1, 4 and negatives 0, 2.
    assert ada_keep([0, 1, 0, 0, 1, 1], 4, 0.5) == [0, 1, 2, 4]
    # only one negative: it and three positives.
    assert ada_keep([1, 1, 0, 1, 1], 4, 0.5) == [0, 1, 2, 3]


def fake_draw(outcomes: dict[int, list[float]]):
    """A ``draw`` that replays fixed reward sequences per prompt (prompt k's next n rewards)."""
    cursor = {k: 0 for k in outcomes}

    def draw(prompts, n, group_ids):
        rewards = []
        for p in prompts:
            rewards += outcomes[p][cursor[p]:cursor[p] + n]
            cursor[p] += n
        rows = len(rewards)
        return Rollouts(samples=[p for p in prompts for _ in range(n)],
                        group_ids=torch.tensor(group_ids).repeat_interleave(n), ids=torch.zeros(rows, 2, dtype=torch.long),
                        mask=torch.ones(rows, 2, dtype=torch.long), texts=[""] * rows,
                        truncated=torch.zeros(rows, dtype=torch.bool), components={"r": torch.tensor(rewards)},
                        total=torch.tensor(rewards, dtype=torch.float64))
    return draw


def test_reinforce_ada_successive_elimination():
    # Prompt 0 is balanced after round 1; prompt 1 needs a second round (its first 2 samples are both 0).
    outcomes = {0: [1.0, 0.0, 1.0, 0.0, 9, 9], 1: [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]}
    ro = reinforce_ada(fake_draw(outcomes), [0, 1], group_size=2, first_group=5, per_round=2, max_rounds=3,
                       threshold=0.5)
    # Round 1: 2 samples each; prompt 0 done ([1, 0]). Round 2: prompt 1 only ([1, 1]) -> done. 6 rows in all.
    assert ro.group_ids.tolist() == [5, 5, 6, 6, 6, 6]
    assert ro.total.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    # Kept groups of 2: prompt 0 rows 0, 1; prompt 1: first positive (row 4) and first negative (row 2).
    assert ro.keep.tolist() == [True, True, True, False, True, False]


# ---------------------------------------------------------------- offline selection and curriculum


def write_stats(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_curriculum_keeps_informative_items_easy_first(tmp_path):
    from mmrl.algorithms.sampling import curriculum

    stats = write_stats(tmp_path / "s.jsonl", [
        {"index": 0, "mean": 0.2, "std": 0.1}, {"index": 1, "mean": 1.0, "std": 0.0},
        {"index": 2, "mean": 0.9, "std": 0.3}, {"index": 3, "mean": 0.5, "std": 0.2}])
    sampler = curriculum(4, 0, stats=stats)
    # Item 1 never varies (std 0) and is dropped; the rest go easy (0.9) -> hard (0.2), then cycle.
    assert sampler.draw(2) == [2, 3] and sampler.draw(2) == [0, 2]
    assert curriculum(4, 0, stats=stats, min_std=-1).draw(4) == [1, 2, 3, 0]


def test_curriculum_reports_bad_files(tmp_path):
    from mmrl.algorithms.sampling import curriculum
    from mmrl.errors import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 0, "mean": 0.5, "std": 0.1}\n{"index": 1, "mean": 0.5}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*std"):
        curriculum(2, 0, stats=str(bad))
    with pytest.raises(DataError, match="has 1 items, the training set 3"):
        curriculum(3, 0, stats=write_stats(tmp_path / "s.jsonl", [{"index": 0, "mean": 0.5, "std": 0.1}]))
    with pytest.raises(DataError, match="missing.jsonl"):
        curriculum(3, 0, stats=str(tmp_path / "missing.jsonl"))
    not_utf8 = tmp_path / "bytes.jsonl"
    not_utf8.write_bytes(b'{"index": 0, "mean": 0.5, "std": 0.1}\n{"index": \xff}\n')
    with pytest.raises(DataError, match=r"bytes.jsonl:2: .*not UTF-8"):
        curriculum(2, 0, stats=str(not_utf8))
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"deep.jsonl:1"):
        curriculum(1, 0, stats=str(deep))
