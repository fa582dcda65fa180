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
and recurrent states too); ``select_rows`` repeats all of it.

Speed: decoding (``shared_generate``) reads each prompt's keys and values once per step for all its rows and
writes each step's into room reserved per row (``rollout.cascade``), and lets finished rows leave the batch; the
log-prob passes continue the prefill's cache in buckets of similar completion lengths (``length_buckets``), so
short completions are not padded to the longest.

Under gradient checkpointing the KV cache is off (a checkpointed layer is run again in the backward pass, and
would write its keys into the cache twice), so the log-prob passes pack each group into one sequence instead:
the prompt, then its G completions side by side, under a 4-D attention mask that lets a completion token see the
prompt and the earlier tokens of its own completion only (``packed_completion_hidden``; the shared-prefix
packing of "Prefix Grouper: Efficient GRPO Training through Shared-Prefix Forward", 2025). Each layer then runs —
and is recomputed in the backward pass — once per group, not once per completion.
"""
from __future__ import annotations

import copy

import torch
from transformers.cache_utils import LinearAttentionCacheLayerMixin

from mmrl.models.families import family_of, unwrap
from mmrl.plugins import MODEL_FAMILIES
from mmrl.rollout.cascade import prefix_shared_decoding, share_prompt_cache
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
    inner = unwrap(model)
    if inner.is_activation_checkpointing:
        if "linear_attention" in (getattr(inner.config.get_text_config(), "layer_types", None) or []):
            return ("gradient checkpointing turns the KV cache off, and the packed groups it then needs cannot run "
                    "linear-attention layers (a recurrence over the whole sequence)")
        if inner.config._attn_implementation != "sdpa":
            return (f"gradient checkpointing turns the KV cache off, and the packed groups it then needs take a 4-D "
                    f"attention mask, which attn_implementation {inner.config._attn_implementation!r} does not; "
                    "use sdpa")
    return None


def select_rows(cache, rows: torch.Tensor) -> None:
    """Make row ``i`` of ``cache`` its former row ``rows[i]``, in place and differentiably (rows may repeat).

    ``reorder_cache`` selects the key/value tensors of attention layers and the conv and recurrent states of
    linear-attention layers (Qwen3.5's gated delta rule) alike; transformers 5.24's ``batch_repeat_interleave`` has
    no linear-attention support. A linear-attention layer reads its recurrent state, then copies the new one into
    that same tensor (a static address for CUDA graphs), which autograd rejects ("modified by an inplace
    operation"): marked uninitialised, the layer writes its next state into a fresh tensor and the selected one,
    still read as the previous state, stays as backward needs it."""
    cache.reorder_cache(rows)
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            layer.is_recurrent_states_initialized = dict.fromkeys(layer.is_recurrent_states_initialized, False)


def repeat_cache(cache, prompts: int, group_size: int) -> None:
    """Repeat each of the ``prompts`` rows of ``cache`` ``group_size`` times in place (row ``p`` becomes rows
    ``p*G .. p*G+G-1``)."""
    select_rows(cache, torch.arange(prompts).repeat_interleave(group_size))


def forked(cache, rows: torch.Tensor):
    """A new cache whose row ``i`` is row ``rows[i]`` of ``cache``, which stays as it was: each layer is copied
    with its own lists and dicts (a linear-attention layer keeps its states in lists), not its tensors, which are
    then re-selected, so gradients still reach the prefill."""
    fork = copy.copy(cache)
    fork.layers = [_layer_copy(layer) for layer in cache.layers]
    select_rows(fork, rows)
    return fork


def _layer_copy(layer):
    twin = copy.copy(layer)
    twin.__dict__ = {k: copy.copy(v) if isinstance(v, (list, dict)) else v for k, v in layer.__dict__.items()}
    return twin


MAX_BUCKETS = 4
"""At most this many forward passes continue one micro-batch's prefill: enough to cut most padding (completion
lengths uniform in [20, 256]: 8,128 padded positions in one bucket, 5,190 in four, for 4,517 real ones), few
enough that each pass keeps a useful batch."""


def length_buckets(lengths: list[int], max_buckets: int | None = None) -> list[list[int]]:
    """Rows sorted by length and cut into at most ``max_buckets`` (default ``MAX_BUCKETS``) runs, the cuts chosen
    (dynamic programming) to minimise the padded positions ``sum_b rows_b * longest_b``; each run is then computed
    at its own width."""
    max_buckets = max_buckets or MAX_BUCKETS
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    best = [[float("inf")] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[k - 1][i] + (j - i) * sorted_len[j - 1]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda b: (best[b][n], b))
    runs, j = [], n
    while j > 0:
        runs.append(order[cut[k][j]:j])
        j, k = cut[k][j], k - 1
    return runs[::-1]


def prompt_positions(model, batch) -> torch.Tensor:
    """Rope position ids of the prompts, as the model's family adapter computes them."""
    return MODEL_FAMILIES.get(family_of(model)).rope_positions(model, batch)


def shared_completion_hidden(model, batch, ids: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """The hidden states ``[P*G, T, H]`` predicting the completions ``ids`` of ``P`` prompts (``batch``,
    left-padded) and their ``G`` completions each (rows ``p*G .. p*G+G-1``), running every prompt once; called
    inside ``logprobs.hidden_state_outputs``. Equal to ``hf.completion_hidden`` on the prompts repeated G times.

    The completions continue the prefill's cache in ``length_buckets``: each bucket of rows at the width of its
    longest completion, so short completions are not padded to the longest of the batch."""
    device = batch["input_ids"].device
    ids, mask = ids.to(device), mask.to(device)
    positions = prompt_positions(model, batch)
    prefill = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = prefill.logits[:, -1:].repeat_interleave(group_size, dim=0)  # predicts completion token 0
    steps = ids.shape[1]
    owner = torch.arange(len(positions[0]), device=device).repeat_interleave(group_size)  # each row's prompt
    lengths = (mask * torch.arange(1, steps + 1, device=device)).amax(-1).tolist()  # through the last real token
    parts, order = [], []
    for rows in length_buckets(lengths):
        width = max(lengths[i] for i in rows)
        order += rows
        if width <= 1:  # only token 0, which the prefill predicts
            parts.append(first.new_zeros(len(rows), steps - 1, first.shape[-1]))
            continue
        rows = torch.tensor(rows, device=device)
        prompts = owner[rows]
        hidden = model(
            input_ids=ids[rows, : width - 1],
            attention_mask=torch.cat([batch["attention_mask"][prompts], mask[rows, : width - 1]], dim=1),
            position_ids=positions[:, prompts, -1:] + torch.arange(1, width, device=device),
            cache=forked(prefill.cache, prompts),
            use_cache=True,
        ).logits
        parts.append(torch.nn.functional.pad(hidden, (0, 0, 0, steps - width)))
    rest = torch.cat(parts)[torch.argsort(torch.tensor(order, device=device))]
    return torch.cat([first, rest], dim=1)


def group_attention_mask(prompt_mask: torch.Tensor, completion_mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """The boolean mask ``[P, 1, L, L]`` (True: may attend) of ``P`` packed groups, each row the prompt (``L_p``
    positions, ``prompt_mask [P, L_p]``: 0 on left padding) then ``G`` completion blocks of ``n`` tokens
    (``completion_mask [P, G*n]``). Query ``i`` sees key ``j <= i`` when ``j`` is a real token and lies in the
    prompt or in ``i``'s own block; every position sees itself, so a padding row is never empty (an all-masked
    softmax row is NaN, and NaN survives being multiplied by a zero gradient)."""
    length = prompt_mask.shape[1]
    n = completion_mask.shape[1] // group_size
    block = torch.cat([torch.full((length,), -1), torch.arange(group_size).repeat_interleave(n)]).to(prompt_mask.device)
    pos = torch.arange(len(block), device=block.device)
    visible = (pos[None] <= pos[:, None]) & ((block[None] == -1) | (block[None] == block[:, None]))
    real = torch.cat([prompt_mask, completion_mask], dim=1).bool()
    return ((visible[None] & real[:, None]) | torch.eye(len(block), dtype=torch.bool, device=block.device))[:, None]


def packed_completion_hidden(model, batch, ids: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """``shared_completion_hidden`` without a KV cache: one forward pass over ``P`` rows, row ``p`` holding prompt
    ``p`` and its ``G`` completions (each without its last token, which predicts nothing) under
    ``group_attention_mask``. Completion token ``t`` sits at rope position ``last + 1 + t`` in every block, as in
    the full sequence; the prompt's last position predicts token 0 of all G completions."""
    device = batch["input_ids"].device
    ids, mask = ids.to(device), mask.to(device)
    prompts = len(batch["input_ids"])
    steps = ids.shape[1]
    body, body_mask = ids[:, :-1].reshape(prompts, -1), mask[:, :-1].reshape(prompts, -1)
    positions = prompt_positions(model, batch)
    inputs = dict(batch, input_ids=torch.cat([batch["input_ids"], body], dim=1),
                  attention_mask=group_attention_mask(batch["attention_mask"], body_mask, group_size),
                  position_ids=torch.cat([positions, positions[:, :, -1:] + torch.arange(1, steps, device=device)
                                          .repeat(group_size)], dim=-1))
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.zeros_like(body)], dim=1)
    hidden = model(**inputs, use_cache=False, logits_to_keep=body.shape[1] + 1).logits
    first = hidden[:, :1].repeat_interleave(group_size, dim=0)
    rest = hidden[:, 1:].reshape(prompts * group_size, steps - 1, hidden.shape[-1])
    return torch.cat([first, rest], dim=1)


def shared_token_stats(model, batch, ids: torch.Tensor, mask: torch.Tensor, group_size: int,
                       temperature: float = 1.0, *, entropy: bool = False, distributions: bool = False) -> TokenStats:
    """``hf.token_stats`` of ``G`` completions per prompt with each prompt run once: from its repeated KV cache,
    or packed with its completions under gradient checkpointing (both tested equal to the full-sequence path to
    1e-5 in fp32, values and gradients)."""
    packed = unwrap(model).is_activation_checkpointing
    with hidden_state_outputs(model) as head:
        hidden = (packed_completion_hidden if packed else shared_completion_hidden)(model, batch, ids, mask,
                                                                                    group_size)
    return head_stats(head, hidden, ids, mask, temperature, entropy=entropy, distributions=distributions)


DRAW_BLOCK = 1024


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` ``[B, V]`` (each row a distribution, up to rounding), by inverse CDF: with
    ``u ~ U[0, 1)`` from torch's generator, the first index ``i`` whose running sum ``c_i = sum_{j<=i} p_j`` exceeds
    ``u * c_V``, so ``P(i) = p_i`` and a zero-probability index is never drawn. In two levels: the block of
    ``DRAW_BLOCK`` indices where the running sum of block totals passes ``u * c_V``, then the index inside that
    block (running sums in float64; block totals to float32 rounding). ``torch.multinomial(probs, 1)`` draws from
    the same distribution but takes ~86 ms for 32 rows of Qwen's 151,669 tokens on a 2-core CPU (most of a
    decoding step at that vocabulary), this under 1 ms."""
    rows, vocab = probs.shape
    full = vocab // DRAW_BLOCK * DRAW_BLOCK
    totals = probs[:, :full].reshape(rows, -1, DRAW_BLOCK).sum(-1)
    if full < vocab:
        totals = torch.cat([totals, probs[:, full:].sum(-1, keepdim=True)], dim=-1)
    totals = totals.double()
    cdf = totals.cumsum(-1)
    u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    block = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
    index = block * DRAW_BLOCK + torch.arange(DRAW_BLOCK, device=probs.device)
    inside = torch.where(index < vocab, probs.gather(1, index.clamp(max=vocab - 1)), 0).double().cumsum(-1)
    rest = u - (cdf.gather(-1, block) - totals.gather(-1, block))  # u's mass within its block
    rest = torch.minimum(rest, torch.nextafter(inside[:, -1:], torch.zeros_like(rest)))  # rounding: stay inside
    return index.gather(1, torch.searchsorted(inside, rest, right=True)).squeeze(-1)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, suppress_ids: list[int] | None) -> torch.Tensor:
    """One token per row from ``logits`` ``[B, V]``: suppressed ids removed, divided by ``temperature``, nucleus
    (``top_p``) filtered, then drawn from the softmax (HF ``generate``'s order of processors, top-k off; ``draw``
    instead of its ``torch.multinomial``)."""
    logits = logits.float() / temperature
    if suppress_ids:
        logits[:, suppress_ids] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return draw(logits.softmax(-1))


def shared_generate(model, processor, batch, group_size: int, *, max_new_tokens: int, do_sample: bool = True,
                    temperature: float = 1.0, top_p: float = 1.0, suppress_ids: list[int] | None = None):
    """``group_size`` completions of each of the ``P`` prompts in ``batch`` (rows ``p*G .. p*G+G-1``), with one
    prefill per prompt, whose keys and values the G continuations, decoded together, all read from one copy
    (``rollout.cascade``: each step writes its keys and values into room reserved per row, and attention reads a
    prompt's keys once for all its rows). Finished rows leave the batch once a quarter of it has finished
    (``cache.reorder_cache`` keeps the others), so the decoding cost follows the completions' lengths rather than
    the longest one's.

    Returns ``Completions`` like ``rollout.hf.generate`` on the prompts repeated G times; greedy decoding gives
    the same tokens (tested), sampling draws from the same distributions (``sample_next``). Decoding runs in
    ``torch.inference_mode`` (no version counters or view tracking: ~4% of its time on a 2-core CPU); the returned
    tensors are ordinary ones, since training reads them."""
    from mmrl.rollout.hf import finish_completions

    with torch.inference_mode():
        tokens = _shared_decode(model, processor.tokenizer, batch, group_size, max_new_tokens, do_sample,
                                temperature, top_p, suppress_ids)
    return finish_completions(processor.tokenizer, tokens.clone())


def _shared_decode(model, tok, batch, group_size: int, max_new_tokens: int, do_sample: bool, temperature: float,
                   top_p: float, suppress_ids: list[int] | None) -> torch.Tensor:
    """``shared_generate``'s tokens ``[P*G, steps]`` (pad after a row's EOS)."""
    positions = prompt_positions(model, batch)
    out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.cache
    share_prompt_cache(cache, batch["attention_mask"], max_new_tokens)
    repeat_cache(cache, positions.shape[1], group_size)
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)
    attention = batch["attention_mask"].repeat_interleave(group_size, dim=0)
    last = positions[:, :, -1:].repeat_interleave(group_size, dim=1)
    tokens = torch.full((len(logits), max_new_tokens), tok.pad_token_id, dtype=torch.long, device=logits.device)
    rows = torch.arange(len(logits), device=logits.device)  # the output row of each row still decoding
    done = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    with prefix_shared_decoding(model):
        for t in range(max_new_tokens):
            if do_sample:
                nxt = sample_next(logits, temperature, top_p, suppress_ids)
            else:
                if suppress_ids:
                    logits[:, suppress_ids] = float("-inf")
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
            tokens[rows, t] = nxt
            done |= nxt == tok.eos_token_id
            if done.all() or t == max_new_tokens - 1:
                break
            if 4 * int(done.sum()) >= len(done):
                keep = (~done).nonzero().flatten()
                cache.reorder_cache(keep)
                rows, nxt, attention, last, done = rows[keep], nxt[keep], attention[keep], last[:, keep], done[keep]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            logits = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=last + t + 1,
                           cache=cache, use_cache=True, prefix_cache=cache).logits[:, -1]
    return tokens[:, : t + 1].cpu()
