"""Group-shared prefix: run each distinct prompt (and its images/video) once, then its G completions against
the prompt's KV cache repeated G times.

A group's G completions share one prompt. The plain path (``rollout.hf.token_distributions``) encodes the
images and runs the whole prompt once per completion; here the vision encoder and the prompt run once per
prompt, with gradients flowing back through the repeated cache, so the policy, old-policy and reference passes
all get cheaper by roughly the prompt/completion length ratio times G.

Positions: Qwen2-VL/2.5-VL use multimodal rope (temporal, height, width ids). The prompt's ids come from the
model's own ``get_rope_index``; every completion token is text after the prompt's last (text) token, so its
three ids are all ``last + 1 + t``, exactly what the full-sequence path computes.
"""
from __future__ import annotations

import torch


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


def _core(model):
    """The multimodal backbone (``model.model``) under any DDP and peft wrappers."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return getattr(base, "model", None)


def unsupported_reason(model) -> str | None:
    """Why the shared prefix cannot be used with ``model`` (None when it can)."""
    if not hasattr(_core(model), "get_rope_index"):
        return f"{type(model).__name__} has no Qwen-VL multimodal rope (get_rope_index)"
    if getattr(model, "is_gradient_checkpointing", False):
        return "gradient checkpointing turns the KV cache off"
    return None


def prompt_positions(model, batch) -> torch.Tensor:
    """Multimodal rope position ids ``[3, P, L]`` of the prompts, as the model computes them."""
    position_ids, _ = _core(model).get_rope_index(
        batch["input_ids"], image_grid_thw=batch.get("image_grid_thw"), video_grid_thw=batch.get("video_grid_thw"),
        attention_mask=batch["attention_mask"], second_per_grid_ts=batch.get("second_per_grid_ts"),
        mm_token_type_ids=batch.get("mm_token_type_ids"),
    )
    return position_ids


def shared_token_distributions(model, batch, ids: torch.Tensor, mask: torch.Tensor, group_size: int,
                               temperature: float = 1.0) -> torch.Tensor:
    """``log pi(. | prompt, y_<t)`` ``[P*G, T, V]`` for ``P`` prompts (``batch``, left-padded) and their ``G``
    completions each (rows ``p*G .. p*G+G-1`` of ``ids``), running every prompt once.

    Equal to ``token_distributions`` on the prompts repeated G times (tested to 1e-5 in fp32, with gradients).
    """
    device = batch["input_ids"].device
    ids, mask = ids.to(device), mask.to(device)
    positions = prompt_positions(model, batch)
    prefill = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = prefill.logits[:, -1:].repeat_interleave(group_size, dim=0)  # predicts completion token 0
    if ids.shape[1] == 1:
        return torch.log_softmax(first.float() / temperature, dim=-1)
    cache = prefill.past_key_values
    cache.batch_repeat_interleave(group_size)
    steps = torch.arange(1, ids.shape[1], device=device)
    last = positions[:, :, -1:].repeat_interleave(group_size, dim=1)
    rest = model(
        input_ids=ids[:, :-1],
        attention_mask=torch.cat([batch["attention_mask"].repeat_interleave(group_size, dim=0), mask[:, :-1]], dim=1),
        position_ids=last + steps,
        past_key_values=cache,
        use_cache=True,
    ).logits
    logits = torch.cat([first, rest], dim=1)
    return torch.log_softmax(logits.float() / temperature, dim=-1)
