"""Decoding the G completions of each prompt against one copy of the prompt's keys and values.

``rollout.shared.shared_generate`` decodes the G completions of each of P prompts together. With the prompt's
KV cache repeated G times, each one-token decoding step reads every prompt's keys and values G times, and such a
step is bound by that memory traffic. Here each attention layer's cache (``PrefixSharedLayer``) holds the
prompt's keys and values once per prompt and each row's own continuation in room reserved for it, and the
attention (``prefix_shared_attention``, registered with transformers' ``AttentionInterface`` as ``ATTENTION``)
reads a prompt's keys once for all its rows: the shared-prefix ("cascade") decomposition of attention of
Hydragen (Juravsky et al., "Hydragen: High-Throughput LLM Inference with Shared Prefixes", 2024). For a row ``b``
of prompt ``p``, a query head ``h`` of key/value head ``k = h // r`` (``r`` query heads per key/value head, as
transformers' ``repeat_kv`` pairs them) and scale ``s``:

    scores  = [ s * q_bh . K_pk  + bias_p ,  s * q_bh . K_bk ]      (prompt positions, then the row's own)
    a       = softmax(scores)
    out_bh  = a_prompt . V_pk  +  a_own . V_bk

``bias_p`` is ``-inf`` at the prompt's left padding, 0 elsewhere: exactly attention over the concatenated
sequence (one softmax over both blocks, which at one query per row is small enough to hold whole, so the
log-sum-exp merge of two partial softmaxes is not needed). The prompt scores of all rows of a prompt, all heads
at once, are one matmul against that prompt's keys.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer

from mmrl.models.families import unwrap

ATTENTION = "mmrl_prefix_shared"
"""The name ``prefix_shared_attention`` is registered under. It has no mask function registered, so transformers
builds no attention mask for it (the prompt padding is ``PrefixSharedLayer.prompt_bias``)."""


class PrefixSharedLayer(DynamicLayer):
    """A decoding cache layer: the prompt's keys and values ``[P, KV, L_p, D]`` once per prompt (and their padding
    bias ``[P*KV, 1, L_p]``), each row's own keys and values at the front of buffers with room for ``reserve``
    positions, ``owner[b]``, the prompt of row ``b``, and ``slots`` (``prompt_slots``). A step writes its
    position in place (no ``torch.cat`` copy of the cache); ``keys`` / ``values`` are the rows' own filled part.
    Built with one row per prompt; ``reorder_cache`` then repeats rows (G per prompt) and drops finished ones.
    In-place writes are not differentiable: generation only."""

    def __init__(self, layer: DynamicLayer, prompt_mask: torch.Tensor, reserve: int):
        super().__init__()
        self.device, self.is_initialized = layer.device, True
        self.prompt_keys, self.prompt_values = layer.keys.contiguous(), layer.values.contiguous()
        rows, heads, _, dim = layer.keys.shape
        bias = torch.zeros(prompt_mask.shape, dtype=layer.keys.dtype, device=layer.keys.device)
        bias = bias.masked_fill(~prompt_mask.bool(), float("-inf"))
        self.prompt_bias = bias[:, None, None].expand(-1, heads, 1, -1).reshape(rows * heads, 1, -1)
        self.buffers = [layer.keys.new_empty(rows, heads, reserve, dim) for _ in range(2)]
        self.owner = torch.arange(rows, device=layer.keys.device)
        self.slots = prompt_slots(self.owner, rows)
        self.length = 0
        self._expose()

    def _expose(self) -> None:
        self.keys, self.values = (b[..., : self.length, :] for b in self.buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.buffers[0].shape[-2]:
            raise RuntimeError(f"PrefixSharedLayer holds {self.buffers[0].shape[-2]} positions; {end} were written")
        for buffer, new in zip(self.buffers, (key_states, value_states)):
            buffer[..., self.length : end, :] = new
        self.length = end
        self._expose()
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        rows = beam_idx.to(self.owner.device)
        self.buffers = [b.index_select(0, rows) for b in self.buffers]
        self.owner = self.owner[rows]
        self.slots = prompt_slots(self.owner, len(self.prompt_keys))
        self._expose()

    def get_seq_length(self) -> int:
        return self.prompt_keys.shape[-2] + self.length


def prompt_slots(owner: torch.Tensor, prompts: int) -> tuple[torch.Tensor | None, int]:
    """Each row's place in a ``[prompts, width]`` grid holding the rows of each prompt side by side (``width``:
    the most rows any prompt has), as a flat index ``owner * width + rank``, and ``width``. The index is ``None``
    when it is ``0, 1, ..., B-1`` (every prompt has ``width`` rows, in prompt order, as before any row has
    left): the grid is then the rows themselves."""
    counts = torch.bincount(owner, minlength=prompts)
    width = max(int(counts.max()), 1) if len(owner) else 1
    if len(owner) == prompts * width and bool((owner[1:] >= owner[:-1]).all()):
        return None, width
    order = torch.argsort(owner, stable=True)
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(len(owner), device=owner.device) - starts[owner[order]]
    return owner * width + rank, width


def _to_grid(x: torch.Tensor, slots: torch.Tensor | None, prompts: int, width: int) -> torch.Tensor:
    """Rows ``[B, KV, r, n]`` -> per prompt and key/value head ``[P*KV, width * r, n]`` (empty places zero)."""
    _, kv, rep, n = x.shape
    if slots is not None:
        x = x.new_zeros(prompts * width, kv, rep, n).index_copy_(0, slots, x)
    return x.view(prompts, width, kv, rep, n).transpose(1, 2).reshape(prompts * kv, width * rep, n)


def _from_grid(x: torch.Tensor, slots: torch.Tensor | None, prompts: int, rep: int) -> torch.Tensor:
    """Per prompt and key/value head ``[P*KV, width * r, n]`` -> rows ``[B, KV, r, n]``."""
    heads, places, n = x.shape
    kv, width = heads // prompts, places // rep
    rows = x.view(prompts, kv, width, rep, n).transpose(1, 2).reshape(prompts * width, kv, rep, n)
    return rows if slots is None else rows[slots]


def prefix_shared_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                            *, scaling: float, prefix_cache, dropout: float = 0.0, **kwargs):
    """One decoding step's attention (module docstring's formula) for the layer ``module.layer_idx`` of
    ``prefix_cache`` (passed through the model call as ``prefix_cache=``): ``query`` ``[B, H, 1, D]``, ``key`` /
    ``value`` the rows' own keys and values ``[B, KV, t, D]`` (what ``PrefixSharedLayer.update`` returned).
    Returns transformers' ``(out [B, 1, H, D], None)``."""
    layer = prefix_cache.layers[module.layer_idx]
    rows, heads, length, dim = query.shape
    if length != 1 or dropout:
        raise ValueError(f"{ATTENTION} attention decodes one token per row without dropout "
                         f"(got {length} query positions, dropout {dropout})")
    kv, prompts = key.shape[1], len(layer.prompt_keys)
    rep, (slots, width) = heads // kv, layer.slots
    q = query.reshape(rows, kv, rep, dim) * scaling
    prompt_keys, prompt_values = layer.prompt_keys.flatten(0, 1), layer.prompt_values.flatten(0, 1)
    grid_scores = torch.baddbmm(layer.prompt_bias, _to_grid(q, slots, prompts, width), prompt_keys.transpose(1, 2))
    prompt_scores = _from_grid(grid_scores, slots, prompts, rep)
    scores = torch.cat([prompt_scores, q @ key.transpose(-1, -2)], dim=-1)
    probs = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    prompt_probs, own_probs = probs.split([prompt_scores.shape[-1], key.shape[-2]], dim=-1)
    prompt_out = torch.bmm(_to_grid(prompt_probs, slots, prompts, width), prompt_values)
    out = _from_grid(prompt_out, slots, prompts, rep) + own_probs @ value
    return out.reshape(rows, 1, heads, dim), None


AttentionInterface.register(ATTENTION, prefix_shared_attention)


def share_prompt_cache(cache, prompt_mask: torch.Tensor, reserve: int) -> None:
    """Turn every plain attention layer of a prefill's ``cache`` (one row per prompt, ``prompt_mask`` ``[P, L_p]``
    its attention mask) into a ``PrefixSharedLayer`` with room for ``reserve`` decoded positions; other layers
    (linear attention's per-row states) stay as they are."""
    cache.layers = [PrefixSharedLayer(layer, prompt_mask, reserve)
                    if type(layer) is DynamicLayer and layer.is_initialized else layer for layer in cache.layers]


@contextmanager
def prefix_shared_decoding(model):
    """Run the text model's attention as ``prefix_shared_attention`` inside the block (its configured
    implementation is restored after)."""
    config = unwrap(model).config.get_text_config()
    before = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before
