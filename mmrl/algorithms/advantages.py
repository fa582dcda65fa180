"""Advantage estimators. Signature: ``fn(rewards[N], group_ids[N], eps) -> advantages[N]``.

Samples with the same ``group_ids`` value are completions of the same prompt.
"""
from __future__ import annotations

import torch

from mmrl.algorithms.registry import ADVANTAGES


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group mean, unbiased group std (0 for a group of one) and group size."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    k = int(inverse.max()) + 1 if len(inverse) else 0
    count = torch.zeros(k, dtype=rewards.dtype).index_add_(0, inverse, torch.ones_like(rewards))
    total = torch.zeros(k, dtype=rewards.dtype).index_add_(0, inverse, rewards)
    mean = total / count
    sq = torch.zeros(k, dtype=rewards.dtype).index_add_(0, inverse, (rewards - mean[inverse]) ** 2)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return mean[inverse], std[inverse], count[inverse]


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
