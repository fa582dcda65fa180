"""Advantage estimators. Signature: ``fn(rewards[N], group_ids[N], eps) -> advantages[N]``.

Samples with the same ``group_ids`` value are completions of the same prompt.
"""
from __future__ import annotations

import torch

from mmrl.algorithms.registry import ADVANTAGES


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group mean, unbiased group std (0 for a group of one) and group size.

    Computed in float64 and returned in ``rewards.dtype``: in float32 the mean of a constant group (e.g. eight
    rewards of 0.7) is off by an ulp, and ``(r - mean) / (std + eps)`` turns that round-off into advantages of
    up to ~0.2, all of one sign, instead of 0.
    """
    r = rewards.double()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    k = int(inverse.max()) + 1 if len(inverse) else 0
    zeros = torch.zeros(k, dtype=r.dtype, device=r.device)
    count = zeros.index_add(0, inverse, torch.ones_like(r))
    mean = zeros.index_add(0, inverse, r) / count
    sq = zeros.index_add(0, inverse, (r - mean[inverse]) ** 2)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return tuple(x[inverse].to(rewards.dtype) for x in (mean, std, count))


@ADVANTAGES.register("grpo")
def grpo(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): ``A_i = (r_i - mean_g) / (std_g + eps)``, std unbiased."""
    mean, std, _ = _group_stats(rewards, group_ids)
    return (rewards - mean) / (std + eps)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): ``A_i = r_i - mean_g`` (no std)."""
    mean, _, _ = _group_stats(rewards, group_ids)
    return rewards - mean


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): ``A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g)``; 0 for G = 1."""
    mean, _, count = _group_stats(rewards, group_ids)
    return torch.where(count > 1, (rewards - mean) * count / (count - 1).clamp(min=1), torch.zeros_like(rewards))
