"""Prompt encoding, sampling with HF ``generate``, and per-token log-probs of completions.

Generation never emits vision placeholder tokens (``<|image_pad|>`` ...): they are suppressed when sampling,
and a completion that contains one anyway (e.g. from a user-supplied answer) has those tokens replaced by
padding and dropped from the loss mask, so the forward pass never sees more image tokens than features.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from PIL import Image

from mmrl.errors import DataError
from mmrl.plugins import MODEL_FAMILIES
from mmrl.rollout.logprobs import TokenStats, head_stats, hidden_state_outputs
from mmrl.types import IMAGE_MARK, VIDEO_MARK, Sample
from mmrl.vision import VideoClip


_MARK_RE = re.compile(f"({re.escape(IMAGE_MARK)}|{re.escape(VIDEO_MARK)})")


def chat_messages(sample: Sample, video_times: list[list[float] | None] | None = None) -> list[dict]:
    """One user turn. Each ``<image>`` / ``<video>`` mark in the prompt is replaced by the sample's next image /
    video; media without a mark come first, videos before images (Qwen's convention). ``video_times[i]``, when
    given, shows video ``i`` as its temporal patches, each preceded by its start time as text (``<1.5s>``)."""
    parts = _MARK_RE.split(sample.prompt)
    marks = parts[1::2]
    for mark, media, kind in ((IMAGE_MARK, sample.images, "images"), (VIDEO_MARK, sample.videos, "videos")):
        if marks.count(mark) > len(media):
            raise ValueError(f"sample {sample.id}: {marks.count(mark)} {mark} marks but {len(media)} {kind}")
    times = iter(video_times or [None] * len(sample.videos))

    def video() -> list[dict]:
        chunk_times = next(times)
        if chunk_times is None:
            return [{"type": "video"}]
        return [p for t in chunk_times for p in ({"type": "text", "text": f"<{t:.1f}s>"}, {"type": "video"})]

    content = [p for _ in range(len(sample.videos) - marks.count(VIDEO_MARK)) for p in video()]
    content += [{"type": "image"} for _ in range(len(sample.images) - marks.count(IMAGE_MARK))]
    for i, text in enumerate(parts):
        if i % 2:
            content += [{"type": "image"}] if text == IMAGE_MARK else video()
        elif text:
            content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def encode_prompts(processor, samples: list[Sample], images: list[list[Image.Image]],
                   videos: list[list[VideoClip]] | None = None, *, family: str):
    """Chat-template and process a batch of prompts (left padding) with their already-resized images and videos
    (frames sampled and resized by ``mmrl.vision.load_video``; the processor neither resamples nor resizes them,
    and gets each video's frame timestamps so Qwen2.5-VL's temporal rope positions are in absolute time; how a
    video reaches the processor is the model ``family``'s: ``video_inputs`` of its adapter).

    Before the model sees it, the batch is checked: a processor failure on a sample's vision inputs, or a prompt
    whose vision placeholder tokens differ in number from its images'/videos' features (the adapter's
    ``check_vision_tokens``), raises ``DataError`` naming the samples (instead of the model's "image features and
    image tokens do not match")."""
    adapter = MODEL_FAMILIES.get(family)
    videos = videos or [[] for _ in samples]
    per_video = [[adapter.video_inputs(processor, clip) for clip in clips] for clips in videos]
    texts = [processor.apply_chat_template(chat_messages(s, [times for _, times in sample_videos]),
                                           add_generation_prompt=True, tokenize=False)
             for s, sample_videos in zip(samples, per_video)]
    per_sample = [list(imgs) for imgs in images] if any(images) else None  # each processor takes nested lists
    clips = [clip for sample_videos in per_video for chunks, _ in sample_videos for clip in chunks]
    kwargs = {"do_resize": False} if MODEL_FAMILIES.capability(family, "pre_resized") else {}
    if clips:
        kwargs.update(videos=[c.frames for c in clips], video_metadata=[c.metadata() for c in clips],
                      do_sample_frames=False, do_resize=False, cap_pixels_per_frame=False)
    ids = ", ".join(s.id for s in samples)
    try:
        batch = processor(text=texts, images=per_sample, padding=True, return_tensors="pt", **kwargs)
    except (ValueError, IndexError, RuntimeError) as e:
        raise DataError(f"samples {ids}: the processor rejected their vision inputs: {e}") from e
    adapter.check_vision_tokens(processor, batch, [s.id for s in samples])
    return batch


def completion_mask(ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the tokens up to and including the first EOS, and whether each row ran out without one."""
    is_eos = ids == eos_id
    has_eos = is_eos.any(-1)
    first = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, ids.shape[1], dtype=torch.long))
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    return (positions <= first.unsqueeze(-1)).long(), ~has_eos


@dataclass
class Completions:
    """Sampled completion tokens (padded), their loss mask, decoded text and truncation flags."""

    ids: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    truncated: list[bool]


@torch.no_grad()
def generate(
    model,
    processor,
    batch,
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    suppress_ids: list[int] | None = None,
) -> Completions:
    """Sample (or greedily decode) one completion per row of ``batch``."""
    tok = processor.tokenizer
    kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    kwargs["eos_token_id"] = tok.eos_token_id
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    if suppress_ids:
        kwargs["suppress_tokens"] = suppress_ids
    out = model.generate(**batch, **kwargs)
    return finish_completions(tok, out[:, batch["input_ids"].shape[1] :].cpu())


def finish_completions(tok, ids: torch.Tensor) -> Completions:
    """Mask everything after each row's first EOS (pad it), decode, and flag rows without an EOS."""
    mask, truncated = completion_mask(ids, tok.eos_token_id)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, tok.pad_token_id))
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    return Completions(ids=ids, mask=mask, texts=texts, truncated=truncated.tolist())


def encode_answers(tokenizer, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ground-truth answers + EOS as right-padded completion tensors (for SFT and off-policy slots)."""
    seqs = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def sanitize(ids: torch.Tensor, mask: torch.Tensor, forbidden: list[int], pad_id: int):
    """Replace forbidden (vision placeholder) tokens by padding and drop them from the mask."""
    bad = torch.isin(ids, torch.tensor(forbidden, dtype=ids.dtype)) if forbidden else torch.zeros_like(mask).bool()
    return ids.masked_fill(bad, pad_id), mask.masked_fill(bad, 0), int(bad.sum())


def completion_hidden(model, batch, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden states ``[B, T, H]`` that predict each completion token (position ``t`` predicts ``ids[:, t]``),
    from one forward pass over prompt + completion; called inside ``logprobs.hidden_state_outputs``. Only the
    last ``T + 1`` positions leave the model."""
    device = batch["input_ids"].device
    ids, mask = ids.to(device), mask.to(device)
    inputs = dict(batch)
    inputs["input_ids"] = torch.cat([batch["input_ids"], ids], dim=1)
    inputs["attention_mask"] = torch.cat([batch["attention_mask"], mask], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.zeros_like(ids)], dim=1)
    return model(**inputs, use_cache=False, logits_to_keep=ids.shape[1] + 1).logits[:, :-1]


def token_stats(model, batch, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0, *,
                entropy: bool = False, distributions: bool = False) -> TokenStats:
    """``TokenStats`` (log-probs, and entropies / distributions when asked) of the completions ``ids`` after the
    prompts ``batch``, at the sampling ``temperature`` (logits divided by it), never materialising ``[B, T, V]``
    unless ``distributions``."""
    with hidden_state_outputs(model) as head:
        hidden = completion_hidden(model, batch, ids, mask)
    return head_stats(head, hidden, ids, mask, temperature, entropy=entropy, distributions=distributions)


def token_logprobs(model, batch, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log pi(y_t | prompt, y_<t)`` for each completion token, shape ``[B, T]`` (0 where ``mask`` is 0)."""
    return token_stats(model, batch, ids, mask, temperature).logp
