"""Policy losses. Signature: ``fn(logp[B,T], old_logp[B,T], advantages[B], eps_low, eps_high) -> loss[B,T]``.

The returned per-token loss is aggregated by a function from ``aggregation``.
"""
from __future__ import annotations

import torch

from mmrl.algorithms.registry import POLICY_LOSSES


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> torch.Tensor:
    """PPO-clip per token (Schulman et al. 2017), asymmetric bounds as DAPO's clip-higher (Yu et al. 2025).

    ``rho = exp(logp - old_logp)``; ``loss = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    return -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
