"""Token weights: multiply the per-token policy loss before aggregation.

Shared signature: ``fn(batch: TokenBatch, *, <hyperparameters>) -> weights[B, T]`` (no gradients). Several
schemes can be active at once; their weights multiply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmrl.plugins import TOKEN_WEIGHTS


def number_token_ids(tokenizer) -> torch.Tensor:
    """Ids of the vocabulary entries whose text contains a digit (for the precision weighting)."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([i for i, tok in enumerate(vocab) if tok and any(c.isdigit() for c in tok)], dtype=torch.long)


@dataclass
class TokenBatch:
    """What token-weighting schemes may read about ``B`` completions of up to ``T`` tokens."""

    ids: torch.Tensor
    """[B, T] completion token ids."""
    mask: torch.Tensor
    """[B, T] 1 for completion tokens."""
    entropy: torch.Tensor | None
    """[B, T] entropy of the policy's distribution at each position (detached); computed only when a scheme
    marked ``needs_entropy`` is active."""
    group_ids: torch.Tensor
    """[B] group (prompt) of each completion."""
    number_mask: torch.Tensor
    """[B, T] 1 for tokens whose text contains a digit."""
    log_dist: torch.Tensor | None = None
    """[B, T, V] the policy's log-probabilities over the vocabulary at each position (detached); computed only
    when a scheme marked ``needs_whole_groups`` is active."""
    log_ratio: torch.Tensor | None = None
    """[B, T] ``log pi_theta - log pi_old`` of the sampled tokens (detached; 0 on-policy)."""
    advantages: torch.Tensor | None = None
    """[B] the completions' advantages."""


@TOKEN_WEIGHTS.register("precision")
def precision(t: TokenBatch, *, weight: float = 2.0) -> torch.Tensor:
    """Precision-token weighting: ``w_t = weight`` on number tokens, else 1, so dimensions and coordinates carry
    more of the loss. CAD-RL's Precision Token Loss up-weights dimension tokens; its exact form is not public,
    so this is our reading of it."""
    return torch.where(t.number_mask.bool(), weight, 1.0) * t.mask


@TOKEN_WEIGHTS.register("entropy_top", needs_entropy=True)
def entropy_top(t: TokenBatch, *, fraction: float = 0.2) -> torch.Tensor:
    """High-entropy minority tokens (Wang et al. 2025, "Beyond the 80/20 Rule"): ``w_t = 1[H_t >= q]`` with
    ``q`` the ``1 - fraction`` quantile (linear interpolation) of the entropies of all completion tokens in the
    batch; the policy gradient flows only through the forking tokens. The quantile is taken per micro-batch:
    the paper's (whole batch) when ``micro_batch_size`` covers a step's completions."""
    valid = t.entropy[t.mask.bool()]
    if valid.numel() == 0:
        return torch.zeros_like(t.entropy)
    threshold = torch.quantile(valid.float(), 1.0 - fraction)
    return ((t.entropy >= threshold) & t.mask.bool()).to(t.entropy.dtype)




@TOKEN_WEIGHTS.register("opsm")
def opsm(t: TokenBatch, *, threshold: float = 0.5) -> torch.Tensor:
    """Off-policy sequence masking (DeepSeek-AI 2025, DeepSeek-V3.2, arXiv 2512.02556, eq. 9; TRL's
    ``off_policy_mask_threshold``): a completion with a negative advantage whose policy has drifted from the one
    that sampled it, ``mean_t (log pi_old - log pi_theta) > threshold`` (the sequence's mean KL estimate), gets
    weight 0; every other completion 1. Learning from one's own far-off-policy mistakes destabilises training
    more than it teaches. mmrl's ``pi_old`` is the policy that sampled the step (TRL's, without vLLM)."""
    tokens = t.mask.sum(-1).clamp(min=1)
    drift = -(t.log_ratio * t.mask).sum(-1) / tokens
    keep = (t.advantages >= 0) | (drift <= threshold)
    return keep[:, None].to(t.mask.dtype) * t.mask


@TOKEN_WEIGHTS.register("tw_grpo", needs_whole_groups=True)
def tw_grpo(t: TokenBatch, *, alpha: float = 1.7) -> torch.Tensor:
    """TW-GRPO token weights (Dang et al. 2025, "Reinforcing Video Reasoning with Focused Thinking",
    arXiv 2505.24718; as in the authors' code): positions where the G completions of a prompt disagree most
    get the most weight.

    Per group and position t (positions past a completion's end use the uniform distribution):
    ``m_t = mean_i log pi_i(. | t)``; ``d = clamp(m_t - log pi_i(. | t), -11, 11)``;
    ``D_t = mean_i sum_v (e^d - d - 1)`` (the intra-group variation of the token distributions);
    ``n_t`` = min-max normalisation of ``D_t`` over the group's positions; ``w_t = 1 + (alpha - 1) n_t`` in
    [1, alpha], the same for every completion of the group (released script: alpha = 1.7).
    """
    weights = torch.ones_like(t.mask, dtype=torch.float32)
    vocab = t.log_dist.shape[-1]
    uniform = torch.full_like(t.log_dist[0, 0], -math.log(vocab))
    for g in torch.unique(t.group_ids).tolist():
        rows = t.group_ids == g
        valid = t.mask[rows].bool()
        width = int(valid.any(0).nonzero().max()) + 1 if valid.any() else 0
        if width == 0:
            continue
        dist = torch.where(valid[:, :width, None], t.log_dist[rows, :width], uniform)
        d = (dist.mean(0, keepdim=True) - dist).clamp(-11, 11)
        variation = (torch.exp(d) - d - 1).sum(-1).mean(0)
        span = variation.max() - variation.min()
        normed = (variation - variation.min()) / span if span > 0 else torch.zeros_like(variation)
        weights[rows, :width] = 1 + (alpha - 1) * normed
    return weights * t.mask


