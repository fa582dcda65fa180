"""Per-token log-probs (and entropies) from the model's final hidden states, without a ``[B, T, V]`` tensor.

A real VLM's vocabulary is large (Qwen: 151,936 tokens), so the fp32 log-softmax over every completion position
is the largest tensor of a GRPO step (32 completions × 256 tokens × 151,936 × 4 bytes ≈ 5 GB, and as much again
for its gradient). Here the forward pass stops at the final hidden states (``hidden_state_outputs`` swaps the
output head for the identity for the length of one call), and the head is applied afterwards to the completion
tokens only (padding skipped), a chunk of rows at a time under activation checkpointing: each chunk's logits
exist in the forward pass only long enough to give

    logp_t = z_t[y_t] − logsumexp(z_t),   H_t = −Σ_v p_t[v] · log p_t[v],   p_t = softmax(z_t),   z_t = W·h_t/τ

(both with gradients: the entropy's for an entropy bonus on the loss) and are recomputed chunk by chunk in the
backward pass, which for a plain bias-free linear head (every Qwen model's) writes the gradient out
(``LinearHeadStats``) instead of taking it through autograd. Peak extra memory:
one chunk of ``chunk_elements`` logits (and its gradient) instead of ``B·T·V``. The values are the full
log-softmax's (same operations per row).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from mmrl.errors import ConfigError
from mmrl.models.families import unwrap

CHUNK_ELEMENTS = 2**24
"""Logits per chunk (64 MiB in fp32): small next to a real model's activations, large enough that the output
head's matmuls stay efficient (~110 token rows at Qwen's vocabulary)."""

_POSTPROCESSED_LOGITS = ("final_logit_softcapping", "logit_scale")


@dataclass
class TokenStats:
    """What a log-prob pass returns for ``B`` completions of ``T`` positions."""

    logp: torch.Tensor
    """[B, T] ``log pi(y_t | prompt, y_<t)`` at temperature τ, 0 where the mask is 0 (with gradients)."""
    entropy: torch.Tensor | None = None
    """[B, T] entropy of ``pi(. | prompt, y_<t)`` at temperature τ, 0 where the mask is 0 (with gradients); only when
    asked for."""
    log_dist: torch.Tensor | None = None
    """[B, T, V] ``log pi(. | prompt, y_<t)`` at every position, detached; only when asked for (it is the one
    full-vocabulary tensor, for token weightings that compare whole distributions)."""


@contextmanager
def hidden_state_outputs(model):
    """Within the context, ``model(...).logits`` are the final hidden states ``[B, L, H]`` (the positions kept
    by ``logits_to_keep``); yields the output head, to be applied by ``head_stats``. The model is called as it
    is, through any DDP / peft wrapper, so gradient synchronisation and adapters behave as usual."""
    inner = unwrap(model)
    config = inner.config.get_text_config()
    for key in _POSTPROCESSED_LOGITS:
        if getattr(config, key, None) not in (None, 1.0):
            raise ConfigError(f"{type(inner).__name__} post-processes its logits ({key}={getattr(config, key)}); "
                              "mmrl computes log-probs from the output head alone and does not support it")
    head = inner.get_output_embeddings()
    inner.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        inner.set_output_embeddings(head)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits`` in float32 divided by ``temperature`` (no pass over them at τ = 1)."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def _row_stats(head, hidden: torch.Tensor, ids: torch.Tensor, temperature: float, with_entropy: bool):
    """``(logp, entropy)`` of rows ``hidden [n, H]`` with targets ``ids [n]`` (entropy empty unless asked)."""
    logits = _scaled(head(hidden), temperature)
    norm = logits.logsumexp(-1)
    logp = logits.gather(-1, ids[:, None]).squeeze(-1) - norm
    return logp, _entropy(logits, norm) if with_entropy else logits.new_zeros(0)


def _entropy(logits: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``H = −Σ_v p_v · log p_v`` per row, ``log p = z − norm`` (``norm`` = ``logsumexp(z)``); the same value as
    ``norm − Σ_v p_v · z_v``, without its cancellation (fp32 error ~1e-7·|z| instead of ~1e-6)."""
    log_p = logits - norm[:, None]
    return -(log_p.exp() * log_p).sum(-1)


class LinearHeadStats(torch.autograd.Function):
    """``(logp, entropy)`` of rows ``hidden [n, H]`` through a bias-free linear head ``weight [V, H]``, ``size`` rows
    at a time, with the gradient written out instead of taken through autograd. The forward pass keeps one
    log-normaliser (and entropy, when asked for) per row, not the logits; the backward pass recomputes a chunk's
    logits once and turns them into the gradients directly:

        ∂logp_t/∂z_t = e_{y_t} − p_t,   ∂H_t/∂z_t = −p_t ⊙ (log p_t + H_t),   p_t = softmax(z_t),   z_t = W·h_t/τ,
        δ_t = g_t·(e_{y_t} − p_t) − g^H_t·p_t ⊙ (log p_t + H_t),   g_t = ∂L/∂logp_t,   g^H_t = ∂L/∂H_t,
        ∂L/∂h_t = Wᵀδ_t / τ,   ∂L/∂W = Σ_t δ_t·h_tᵀ / τ.

    The entropy term costs one more ``[rows, V]`` tensor per chunk, and only when the loss uses the entropy (its
    gradient is not None and not all 0). Autograd through a checkpointed log-softmax does the same matrix products
    but more passes over each chunk's ``[rows, V]`` logits (the forward recomputed in full, the log-sum-exp's
    backward, the gather's one-hot scatter into zeros): at Qwen's vocabulary those passes were over half of the
    head's time."""

    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature: float, size: int, with_entropy: bool):
        logps, norms, entropies = [], [], []
        for start in range(0, len(hidden), size):
            logits = _scaled(torch.nn.functional.linear(hidden[start:start + size], weight), temperature)
            norm = logits.logsumexp(-1)
            logps.append(logits.gather(-1, ids[start:start + size, None]).squeeze(-1) - norm)
            norms.append(norm)
            if with_entropy:
                entropies.append(_entropy(logits, norm))
        entropy = torch.cat(entropies) if with_entropy else hidden.new_zeros(0, dtype=torch.float32)
        ctx.save_for_backward(hidden, weight, ids, torch.cat(norms), entropy)
        ctx.temperature, ctx.size = temperature, size
        ctx.set_materialize_grads(False)  # an output the loss does not use gets None: no pass for it
        return torch.cat(logps), entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, ids, norm, entropy = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        if grad_logp is None:
            grad_logp = norm.new_zeros(norm.shape)
        if grad_entropy is not None and not bool(grad_entropy.any()):
            grad_entropy = None
        for start in range(0, len(hidden), ctx.size):
            rows = slice(start, start + ctx.size)
            g = grad_logp[rows].float() / ctx.temperature
            logits = _scaled(torch.nn.functional.linear(hidden[rows], weight), ctx.temperature)
            log_p = logits.sub_(norm[rows, None])  # in place of the logits
            if grad_entropy is None:
                dz = log_p.exp_().mul_(-g[:, None])  # −(g/τ)·p
            else:
                gh = grad_entropy[rows].float() / ctx.temperature
                p = log_p.exp()  # −p·((g/τ) + (g^H/τ)·(log p + H))
                dz = log_p.mul_(gh[:, None]).add_((g + gh * entropy[rows])[:, None]).mul_(p).neg_()
            dz = dz.scatter_add_(-1, ids[rows, None], g[:, None]).to(weight.dtype)  # + (g/τ)·e_y
            if grad_hidden is not None:
                grad_hidden[rows] = dz @ weight
            if grad_weight is not None:
                grad_weight.addmm_(dz.t(), hidden[rows])
        return grad_hidden, grad_weight, None, None, None, None


def _checkpointed_stats(head, rows: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: bool,
                        size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``_row_stats`` of ``size`` rows at a time, each chunk under activation checkpointing: for heads that are not
    a plain bias-free linear layer (a bias, adapters on it), through autograd."""
    parts = []
    for start in range(0, len(rows), size):
        part = (head, rows[start:start + size], targets[start:start + size], temperature, entropy)
        parts.append(checkpoint(_row_stats, *part, use_reentrant=False) if torch.is_grad_enabled()
                     else _row_stats(*part))
    return torch.cat([logp for logp, _ in parts]), torch.cat([ent for _, ent in parts])


def head_stats(head, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0, *,
               entropy: bool = False, distributions: bool = False,
               chunk_elements: int | None = None) -> TokenStats:
    """``TokenStats`` of completions ``ids [B, T]`` (``mask`` 1 on completion tokens) from the hidden states
    ``hidden [B, T, H]`` that predict them, applying ``head`` to at most ``chunk_elements`` logits at a time
    (default ``CHUNK_ELEMENTS``)."""
    ids, mask = ids.to(hidden.device), mask.to(hidden.device)
    keep = mask.bool()
    rows, targets = hidden[keep], ids[keep]
    if len(rows) == 0:  # nothing to score: still one row through the head, times 0, so that the graph reaches
        # every parameter (its gradient is 0, as with the full log-softmax; DDP waits for every gradient)
        rows, targets, keep = hidden[:1, 0], ids[:1, 0], None
    vocab = head.weight.shape[0]
    size = max(1, (chunk_elements or CHUNK_ELEMENTS) // vocab)
    if type(head) is torch.nn.Linear and head.bias is None:
        logp, ent = LinearHeadStats.apply(rows, head.weight, targets, temperature, size, entropy)
    else:
        logp, ent = _checkpointed_stats(head, rows, targets, temperature, entropy, size)
    zeros = hidden.new_zeros(mask.shape, dtype=torch.float32)
    if keep is None:
        stats = TokenStats(zeros + 0 * logp.sum(), torch.zeros_like(zeros) if entropy else None)
    else:
        stats = TokenStats(zeros.masked_scatter(keep, logp), zeros.masked_scatter(keep, ent) if entropy else None)
    if distributions:
        with torch.no_grad():
            stats.log_dist = torch.log_softmax(_scaled(head(hidden), temperature), dim=-1)
    return stats
