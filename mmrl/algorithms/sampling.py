"""Which prompts to draw, how many completions to sample for each, and which groups to train on.

* Prompt samplers (``PROMPT_SAMPLERS``): ``fn(n_items, seed, *, <hyperparameters>) -> sampler`` with
  ``draw(count) -> indices``, ``update(outcomes)`` after each step with ``(index, rewards, texts)`` per prompt
  sampled (from every rank), and
  ``state_dict``/``load_state_dict`` for exact resume. All ranks draw the same indices and take their share.
* Rollout strategies (``ROLLOUTS``): ``fn(draw, prompts, group_size, first_group, *, <hyperparameters>) ->
  Rollouts`` where ``draw(prompts, n, group_ids)`` samples and scores ``n`` completions of each prompt, the
  k-th prompt's rows getting group id ``group_ids[k]``.
* DAPO dynamic sampling and overlong filtering (Yu et al. 2025, §3.2 and §3.4): ``informative_groups`` and
  ``row_weights``.
* Offline variance-aware selection and a difficulty curriculum (``curriculum`` sampler) over the per-item
  statistics that ``mmrl select`` writes (``mmrl.selection``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmrl.data import indices_at
from mmrl.errors import DataError
from mmrl.eval.records import json_rows
from mmrl.plugins import PROMPT_SAMPLERS, ROLLOUTS
from mmrl.rollout.groups import concat


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> list[int]:
    """Groups whose rewards are not all equal (a constant group has zero advantage everywhere)."""
    out = []
    for g in torch.unique(group_ids).tolist():
        r = rewards[group_ids == g]
        if (r != r[0]).any():
            out.append(g)
    return out


def row_weights(group_ids: torch.Tensor, truncated: torch.Tensor, informative: list[int], dynamic_sampling: str,
                overlong_filter: bool, limit: int) -> torch.Tensor:
    """1 for rows that enter the loss, else 0.

    ``dynamic_sampling`` ``drop``/``refill`` keeps only the first ``limit`` informative groups (DAPO fills the
    batch with groups whose accuracy is neither 0 nor 1 and discards the rest); ``overlong_filter`` zeroes
    truncated completions (DAPO's overlong filtering masks their loss).
    """
    weight = torch.ones(len(group_ids))
    if dynamic_sampling != "off":
        keep = torch.tensor(informative[:limit], dtype=group_ids.dtype)
        weight = weight * torch.isin(group_ids, keep).float()
    if overlong_filter:
        weight = weight * (~truncated.bool()).float()
    return weight


class UniformPrompts:
    """Seeded epochs over the data: each epoch a fresh permutation, consumed in order."""

    def __init__(self, n_items: int, seed: int):
        self.n_items, self.seed, self.position = n_items, seed, 0

    def draw(self, count: int) -> list[int]:
        out = indices_at(self.n_items, self.position, count, self.seed)
        self.position += count
        return out

    def update(self, outcomes: list[tuple[int, list[float], list[str]]]) -> None:
        """Uniform sampling ignores outcomes."""

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


@PROMPT_SAMPLERS.register("uniform")
def uniform(n_items: int, seed: int) -> UniformPrompts:
    """Every item once per epoch, in a seeded random order (the default)."""
    return UniformPrompts(n_items, seed)


@ROLLOUTS.register("fixed")
def fixed(draw, prompts: list, group_size: int, first_group: int):
    """``group_size`` completions of every prompt (GRPO's rollout)."""
    return draw(prompts, group_size, list(range(first_group, first_group + len(prompts))))


GREEDY_TOP_P = 1e-9
"""Nucleus sampling with this ``top_p`` keeps only the most likely token: greedy decoding through the sampler."""


@ROLLOUTS.register("remax")
def remax(draw, prompts: list, group_size: int, first_group: int):
    """ReMax's rollout (Li et al. 2023, arXiv 2310.10505, Algorithm 1): ``group_size`` sampled completions of every
    prompt plus its greedy completion (``GREEDY_TOP_P``), scored like the others; the greedy rows are the
    baseline of ``advantage: remax`` and are not trained on (``keep`` is False on them)."""
    groups = list(range(first_group, first_group + len(prompts)))
    ro = concat([draw(prompts, group_size, groups), draw(prompts, 1, groups, top_p=GREEDY_TOP_P)])
    ro.keep = torch.arange(len(ro)) < len(ro) - len(prompts)
    return ro


def outcome_variance(rewards: list[float]) -> float:
    """MMR1's Outcome Variance Score: the variance of a prompt's rollout rewards (``p (1 - p)`` for 0/1 rewards)."""
    r = torch.tensor(rewards, dtype=torch.float64)
    return float(r.var(unbiased=False)) if len(r) else 0.0


def trajectory_diversity(texts: list[str]) -> float:
    """Trajectory Diversity Score: the fraction of distinct completions among a prompt's rollouts, in [0, 1].

    MMR1 measures diversity with e.g. inverse self-BLEU; the exact form was not available, so this uses the
    simplest diversity measure that is 0 for identical trajectories and 1 for all-distinct ones."""
    return (len(set(texts)) - 1) / max(len(texts) - 1, 1) if texts else 0.0


class VarianceAwarePrompts(UniformPrompts):
    """MMR1 Variance-Aware Sampling (Leng et al. 2025, arXiv 2509.21268).

    Each item keeps a Variance Promotion Score ``VPS = alpha * OVS + beta * TDS`` from its latest rollouts
    (unseen items: ``initial``, so they get explored). Draws are without replacement from
    ``P(x) = mix * VPS(x) / sum VPS + (1 - mix) / |D|``: prompts whose outcomes vary (the ones that give GRPO a
    gradient) come more often, and the uniform part keeps every item reachable. Scores refresh after every step.
    """

    def __init__(self, n_items: int, seed: int, alpha: float, beta: float, mix: float, initial: float):
        super().__init__(n_items, seed)
        self.alpha, self.beta, self.mix = alpha, beta, mix
        self.scores = torch.full((n_items,), float(initial), dtype=torch.float64)
        self.draws = 0

    def probabilities(self) -> torch.Tensor:
        total = self.scores.sum()
        weighted = self.scores / total if total > 0 else torch.full_like(self.scores, 1 / self.n_items)
        return self.mix * weighted + (1 - self.mix) / self.n_items

    def draw(self, count: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws)
        self.draws += 1
        return torch.multinomial(self.probabilities(), count, replacement=False, generator=gen).tolist()

    def update(self, outcomes: list[tuple[int, list[float], list[str]]]) -> None:
        for index, rewards, texts in outcomes:
            self.scores[index] = self.alpha * outcome_variance(rewards) + self.beta * trajectory_diversity(texts)

    def state_dict(self) -> dict:
        return {"scores": self.scores.clone(), "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.scores, self.draws = state["scores"].clone(), state["draws"]


@PROMPT_SAMPLERS.register("vas")
def vas(n_items: int, seed: int, *, alpha: float = 1.0, beta: float = 1.0, mix: float = 0.5,
        initial: float = 0.5) -> VarianceAwarePrompts:
    """MMR1 Variance-Aware Sampling: prompts drawn in proportion to their Variance Promotion Score, mixed with
    uniform draws (``mix`` = share of the VPS-weighted part)."""
    return VarianceAwarePrompts(n_items, seed, alpha, beta, mix, initial)


def ada_done(rewards: list[float], n: int, threshold: float, balanced: bool) -> bool:
    """Reinforce-Ada's stopping rule for one prompt: enough signal once it has ``n // 2`` positives and
    ``n - n // 2`` negatives (balanced) or at least one positive (positive-focused); positive = reward >
    ``threshold``."""
    pos = sum(r > threshold for r in rewards)
    return pos >= n // 2 and len(rewards) - pos >= n - n // 2 if balanced else pos >= 1


def ada_keep(rewards: list[float], n: int, threshold: float) -> list[int]:
    """Reinforce-Ada's final group: up to ``n // 2`` positives, then negatives, topped up from whichever class
    has more, each in generation order; returns ``n`` row positions (fewer only if fewer were sampled)."""
    pos = [i for i, r in enumerate(rewards) if r > threshold]
    neg = [i for i, r in enumerate(rewards) if r <= threshold]
    take_pos = pos[: n // 2]
    take_neg = neg[: n - len(take_pos)]
    rest = [i for i in pos[len(take_pos):] + neg[len(take_neg):]]
    return sorted(take_pos + take_neg + rest[: n - len(take_pos) - len(take_neg)])


@ROLLOUTS.register("reinforce_ada")
def reinforce_ada(draw, prompts: list, group_size: int, first_group: int, *, per_round: int = 8,
                  max_rounds: int = 4, threshold: float = 0.5, balanced: bool = True):
    """Reinforce-Ada (Xiong et al. 2025, arXiv 2510.04996): adaptive per-prompt sampling with successive
    elimination. Each round samples ``per_round`` completions for every prompt still active; a prompt leaves
    once ``ada_done`` (enough positives and negatives); after ``max_rounds`` the rest keep what they have.
    Every collected completion stays in the rollouts, so advantages use the statistics of all of a prompt's
    samples (the paper's global baseline); ``keep`` marks the ``group_size`` rows per prompt chosen by
    ``ada_keep`` that enter the loss."""
    parts, active = [], list(range(len(prompts)))
    for _ in range(max_rounds):
        if not active:
            break
        parts.append(draw([prompts[k] for k in active], per_round, [first_group + k for k in active]))
        collected = concat(parts)
        active = [k for k in active
                  if not ada_done(collected.total[collected.group_ids == k + first_group].tolist(), group_size,
                                  threshold, balanced)]
    ro = concat(parts)
    keep = torch.zeros(len(ro), dtype=torch.bool)
    for k in range(len(prompts)):
        rows = (ro.group_ids == k + first_group).nonzero().flatten()
        keep[rows[ada_keep(ro.total[rows].tolist(), group_size, threshold)]] = True
    ro.keep = keep
    return ro


def item_statistics(rewards: list[float]) -> dict:
    """Mean and population std of one item's rollout rewards."""
    r = torch.tensor(rewards, dtype=torch.float64)
    return {"mean": float(r.mean()), "std": float(r.std(unbiased=False)), "rewards": list(rewards)}


def informative(stats: list[dict], min_std: float) -> list[int]:
    """Positions of the items whose reward std exceeds ``min_std`` (0: every item whose rewards vary at all)."""
    return [i for i, s in enumerate(stats) if s["std"] > min_std]


def easy_to_hard(stats: list[dict], positions: list[int]) -> list[int]:
    """``positions`` ordered by decreasing mean reward (easiest first); ties keep their order."""
    return sorted(positions, key=lambda i: -stats[i]["mean"])


def read_statistics(path: str | Path) -> list[dict]:
    """Rows of an ``mmrl select`` output file, in item order; malformed lines name the file and line."""
    rows = []
    for where, row in json_rows(path, "selection statistics"):
        try:
            rows.append({"index": int(row["index"]), "mean": float(row["mean"]), "std": float(row["std"])})
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            raise DataError(f"{where}: not a selection row ({type(e).__name__}: {e})") from None
    return sorted(rows, key=lambda r: r["index"])


class CurriculumPrompts(UniformPrompts):
    """Draws a fixed order of items (easy to hard), cycling epoch after epoch; ``position`` is the state."""

    def __init__(self, order: list[int], seed: int):
        super().__init__(len(order), seed)
        self.order = order

    def draw(self, count: int) -> list[int]:
        out = [self.order[(self.position + k) % len(self.order)] for k in range(count)]
        self.position += count
        return out


@PROMPT_SAMPLERS.register("curriculum")
def curriculum(n_items: int, seed: int, *, stats: str = "", min_std: float = 0.0) -> CurriculumPrompts:
    """Items from an ``mmrl select`` file with reward std above ``min_std`` (Temporal-R1's variance-aware
    selection; ``min_std: -1`` keeps all), ordered from easy to hard (a difficulty curriculum)."""
    if not stats:
        raise DataError("the curriculum prompt sampler needs grpo.prompt_sampler_args.stats: an `mmrl select` file")
    rows = read_statistics(stats)
    if len(rows) != n_items or [r["index"] for r in rows] != list(range(n_items)):
        raise DataError(f"{stats}: has {len(rows)} items, the training set {n_items}; rerun `mmrl select` on it")
    order = easy_to_hard(rows, informative(rows, min_std))
    if not order:
        raise DataError(f"{stats}: no item has reward std > {min_std}; lower min_std")
    return CurriculumPrompts(order, seed)
