"""Per-token KL estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL Divergence").

Signature: ``fn(logp[B,T], ref_logp[B,T]) -> kl[B,T]``. ``importance_weighted`` is the optional importance-ratio
correction of whichever estimator is chosen (``grpo.kl_importance_ratio``).
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


IMPORTANCE_LEVELS = ("token", "sequence", "off")
"""Values of ``grpo.kl_importance_ratio``."""


def importance_weighted(kl: torch.Tensor, logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                        level: str) -> torch.Tensor:
    """The KL term multiplied by the importance ratio ``rho = pi_theta / pi_old`` (DeepSeek-V3.2, arXiv 2512.02556;
    TRL's ``use_bias_correction_kl``): the tokens were sampled from ``pi_old``, so ``E_old[rho k3]`` is
    the KL of the current policy and the gradient of ``rho k3`` is the unbiased reverse-KL gradient. ``rho`` keeps
    its gradient, so this changes the gradient even on-policy (``rho = 1``): ``grad(rho k3) = k3 grad logp +
    grad k3``. ``level``: ``token`` (``rho_t``), ``sequence`` (``exp(mean_t log rho_t)`` of the completion,
    TRL's form under ``importance_sampling_level="sequence"``) or ``off`` (the plain estimator)."""
    if level == "off":
        return kl
    log_ratio = logp - old_logp
    if level == "sequence":
        log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    elif level != "token":
        raise ValueError(f"KL importance level {level!r} is not one of {', '.join(IMPORTANCE_LEVELS)}")
    return kl * torch.exp(log_ratio)
