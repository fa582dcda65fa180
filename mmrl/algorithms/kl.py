"""Per-token KL estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL Divergence").

Signature: ``fn(logp[B,T], ref_logp[B,T]) -> kl[B,T]``.
"""
from __future__ import annotations

import torch

from mmrl.plugins import KL_ESTIMATORS


@KL_ESTIMATORS.register("k1")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``log pi - log pi_ref`` (unbiased, high variance, can be negative)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``0.5 (log pi - log pi_ref)^2``."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``exp(ref - logp) - (ref - logp) - 1`` (unbiased, non-negative; GRPO's choice)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


@KL_ESTIMATORS.register("low_var_kl")
def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """verl's ``low_var_kl``: k3 with the log-ratio clamped to [-20, 20] and the result to [-10, 10], so one token
    whose reference log-prob collapsed cannot dominate the loss."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)
