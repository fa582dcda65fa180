"""Group-shared prefix: run each distinct prompt (and its images/video) once, then its G completions against
the prompt's KV cache repeated G times.

A group's G completions share one prompt. The plain path (``rollout.hf.token_stats``) encodes the
images and runs the whole prompt once per completion; here the vision encoder and the prompt run once per
prompt, with gradients flowing back through the repeated cache, so the policy, old-policy and reference passes
all get cheaper by roughly the prompt/completion length ratio times G.

Positions: the Qwen families use multimodal rope (temporal, height, width ids). The prompt's ids come from the
family adapter (``rope_positions``: the model's own ``get_rope_index``); every completion token is text after the
prompt's last (text) token, so its three ids are all ``last + 1 + t``, exactly what the full-sequence path
computes. The cache holds whatever the prefill left per layer (keys and values; Qwen3.5's linear-attention conv
and recurrent states too); ``repeat_cache`` repeats all of it.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import LinearAttentionCacheLayerMixin

from mmrl.models.families import family_of, unwrap
from mmrl.plugins import MODEL_FAMILIES
from mmrl.rollout.logprobs import TokenStats, head_stats, hidden_state_outputs


def expand_batch(batch, group_size: int):
    """Prompt encodings repeated ``group_size`` times row-wise (for the full-sequence path on shared prompts)."""
    out = dict(batch)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "second_per_grid_ts"):
        if key in out:
            out[key] = out[key].repeat_interleave(group_size, dim=0)
    per_row = lambda name: name in out and out[name] is not None  # noqa: E731
    for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
        if per_row(pixels):
            out[pixels], out[grid] = _repeat_visual(out[pixels], out[grid], batch["input_ids"], group_size)
    return out


def _repeat_visual(pixels: torch.Tensor, grid: torch.Tensor, input_ids: torch.Tensor, group_size: int):
    """Repeat each prompt's patches and grid rows ``group_size`` times (one image or video per prompt)."""
    if len(grid) != len(input_ids):
        raise ValueError("expand_batch needs exactly one image or video per prompt")
    sizes = grid.prod(-1).tolist()
    chunks = torch.split(pixels, sizes)
    return (torch.cat([c for c in chunks for _ in range(group_size)]), grid.repeat_interleave(group_size, dim=0))


def unsupported_reason(model) -> str | None:
    """Why the shared prefix cannot be used with ``model`` (None when it can)."""
    family, model_type = family_of(model), unwrap(model).config.model_type
    if not MODEL_FAMILIES.capability(family, "shared_prefix"):
        return f"model type {model_type!r} runs as family {family!r}, which has no shared-prefix support"
    if unwrap(model).is_activation_checkpointing:
        return "gradient checkpointing turns the KV cache off"
    return None


def repeat_cache(cache, prompts: int, group_size: int) -> None:
    """Repeat each of the ``prompts`` rows of ``cache`` ``group_size`` times in place (row ``p`` becomes rows
    ``p*G .. p*G+G-1``), differentiably.

    ``reorder_cache`` with index ``[0]*G + [1]*G + ...`` selects the key/value tensors of attention layers and the
    conv and recurrent states of linear-attention layers (Qwen3.5's gated delta rule) alike; transformers 5.24's
    ``batch_repeat_interleave`` has no linear-attention support. A linear-attention layer reads its recurrent state,
    then copies the new one into that same tensor (a static address for CUDA graphs), which autograd rejects
    ("modified by an inplace operation"): marked uninitialised, the layer writes its next state into a fresh
    tensor and the repeated one, still read as the previous state, stays as backward needs it."""
    cache.reorder_cache(torch.arange(prompts).repeat_interleave(group_size))
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            layer.is_recurrent_states_initialized = dict.fromkeys(layer.is_recurrent_states_initialized, False)


def prompt_positions(model, batch) -> torch.Tensor:
    """Rope position ids of the prompts, as the model's family adapter computes them."""
    return MODEL_FAMILIES.get(family_of(model)).rope_positions(model, batch)


def shared_completion_hidden(model, batch, ids: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """The hidden states ``[P*G, T, H]`` predicting the completions ``ids`` of ``P`` prompts (``batch``,
    left-padded) and their ``G`` completions each (rows ``p*G .. p*G+G-1``), running every prompt once; called
    inside ``logprobs.hidden_state_outputs``. Equal to ``hf.completion_hidden`` on the prompts repeated G times."""
    device = batch["input_ids"].device
    ids, mask = ids.to(device), mask.to(device)
    positions = prompt_positions(model, batch)
    prefill = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = prefill.logits[:, -1:].repeat_interleave(group_size, dim=0)  # predicts completion token 0
    if ids.shape[1] == 1:
        return first
    cache = prefill.cache
    repeat_cache(cache, positions.shape[1], group_size)
    steps = torch.arange(1, ids.shape[1], device=device)
    last = positions[:, :, -1:].repeat_interleave(group_size, dim=1)
    rest = model(
        input_ids=ids[:, :-1],
        attention_mask=torch.cat([batch["attention_mask"].repeat_interleave(group_size, dim=0), mask[:, :-1]], dim=1),
        position_ids=last + steps,
        cache=cache,
        use_cache=True,
    ).logits
    return torch.cat([first, rest], dim=1)


def shared_token_stats(model, batch, ids: torch.Tensor, mask: torch.Tensor, group_size: int,
                       temperature: float = 1.0, *, entropy: bool = False, distributions: bool = False) -> TokenStats:
    """``hf.token_stats`` of ``G`` completions per prompt with each prompt run once (tested equal to the
    full-sequence path to 1e-5 in fp32, values and gradients)."""
    with hidden_state_outputs(model) as head:
        hidden = shared_completion_hidden(model, batch, ids, mask, group_size)
    return head_stats(head, hidden, ids, mask, temperature, entropy=entropy, distributions=distributions)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, suppress_ids: list[int] | None) -> torch.Tensor:
    """One token per row from ``logits`` ``[B, V]``: suppressed ids removed, divided by ``temperature``, nucleus
    (``top_p``) filtered, then drawn from the softmax (HF ``generate``'s order of processors, top-k off)."""
    logits = logits.float() / temperature
    if suppress_ids:
        logits[:, suppress_ids] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


@torch.no_grad()
def shared_generate(model, processor, batch, group_size: int, *, max_new_tokens: int, do_sample: bool = True,
                    temperature: float = 1.0, top_p: float = 1.0, suppress_ids: list[int] | None = None):
    """``group_size`` completions of each of the ``P`` prompts in ``batch`` (rows ``p*G .. p*G+G-1``), with one
    prefill per prompt: its KV cache is repeated G times and the G continuations are decoded together.

    Returns ``Completions`` like ``rollout.hf.generate`` on the prompts repeated G times; greedy decoding gives
    the same tokens (tested)."""
    from mmrl.rollout.hf import finish_completions

    tok = processor.tokenizer
    positions = prompt_positions(model, batch)
    out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.cache
    repeat_cache(cache, positions.shape[1], group_size)
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)
    attention = batch["attention_mask"].repeat_interleave(group_size, dim=0)
    last = positions[:, :, -1:].repeat_interleave(group_size, dim=1)
    done = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    tokens = []
    for t in range(max_new_tokens):
        if do_sample:
            nxt = sample_next(logits, temperature, top_p, suppress_ids)
        else:
            if suppress_ids:
                logits[:, suppress_ids] = float("-inf")
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
        tokens.append(nxt)
        done |= nxt == tok.eos_token_id
        if done.all() or t == max_new_tokens - 1:
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        logits = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=last + t + 1,
                       cache=cache, use_cache=True).logits[:, -1]
    return finish_completions(tok, torch.stack(tokens, dim=1).cpu())
