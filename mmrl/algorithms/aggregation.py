"""Loss aggregation over tokens. Signature: ``fn(loss[B,T], mask[B,T], n_tokens, n_seqs, max_len) -> scalar``.

``n_tokens``/``n_seqs`` are totals over the whole optimisation batch, so summing the results of its
micro-batches gives the full-batch value (gradient accumulation changes nothing).
"""
from __future__ import annotations

import torch

from mmrl.plugins import AGGREGATIONS


@AGGREGATIONS.register("token_mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, n_tokens: int, n_seqs: int, max_len: int) -> torch.Tensor:
    """Mean over every completion token of the batch (DAPO): ``sum(loss * mask) / n_tokens``."""
    return (loss * mask).sum() / max(n_tokens, 1)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, n_tokens: int, n_seqs: int, max_len: int
) -> torch.Tensor:
    """Original GRPO: mean over each sequence's tokens, then mean over sequences."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / max(n_seqs, 1)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, n_tokens: int, n_seqs: int, max_len: int
) -> torch.Tensor:
    """Dr. GRPO: per-sequence token sums divided by a constant (``max_len``), then mean over sequences."""
    return (loss * mask).sum() / (max_len * max(n_seqs, 1))


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(
    loss: torch.Tensor, mask: torch.Tensor, n_tokens: int, n_seqs: int, max_len: int
) -> torch.Tensor:
    """LUSPO (Length-Unbiased Sequence Policy Optimization, arXiv 2602.05261; TRL's ``luspo``): each sequence's
    token sum, then the mean over sequences, ``sum(loss * mask) / n_seqs``; with ``policy_loss: gspo`` every
    sequence's GSPO loss is scaled by its length, so long completions are not under-weighted."""
    return (loss * mask).sum() / max(n_seqs, 1)
