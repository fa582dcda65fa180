"""Model-family adapters, chosen by the checkpoint's ``config.model_type``: the one place that knows a family.

An adapter is a class registered in ``mmrl.plugins.MODEL_FAMILIES`` under each ``model_type`` it serves, with
what the engine needs to know declared at registration:

* ``coords``: the coordinate convention the family answers grounding in. ``resized``: absolute pixels of the image
  the model saw (after ``smart_resize``; Qwen2.5-VL). ``0-1000``: each axis scaled to 0..1000 of the image
  (Qwen2-VL, Qwen3-VL, Qwen3.5). Tasks ask for it in their prompts, and their rewards and metrics map answers back
  to original pixels with it;
* ``factor``: images and video frames are resized (under ``model.min_pixels``/``max_pixels``) to sides that are
  multiples of this (patch size x spatial merge: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL), so the processor never
  resizes again and the coordinate map the rewards use is exactly what the model saw;
* ``shared_prefix``: the group-shared prefix works (the adapter computes the prompt's rope positions).

and, as methods, how video reaches the processor (``video_inputs``) and the pre-flight check that a prompt's vision
placeholder tokens match its images' and videos' features (``check_vision_tokens``). A model type without an adapter
gets ``generic``: any ``AutoModelForImageTextToText`` through full sequences, answers asked in 0-1000, the
processor's own placeholder expansion.

Adding a family: one class here (or in a plugin) registered under its ``model_type``; see docs/models.md.
"""
from __future__ import annotations

import torch
from peft import PeftModel

from mmrl.errors import ConfigError
from mmrl.plugins import MODEL_FAMILIES
from mmrl.vision import VideoClip, check_vision_tokens

def unwrap(model) -> torch.nn.Module:
    """The transformers model under any DDP (``.module``) and peft wrapper."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.get_base_model() if isinstance(model, PeftModel) else model


def model_type_of(path: str) -> str:
    """``config.model_type`` of the checkpoint at ``path`` (a folder or hub id), without loading weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as e:
        raise ConfigError(f"model {path}: cannot read its config: {e}") from None


def family_name(model_type: str) -> str:
    """The adapter serving ``model_type``: its own when registered, else ``generic``."""
    return model_type if model_type in MODEL_FAMILIES else "generic"


def family_of(model) -> str:
    """The adapter name of a loaded ``model``."""
    return family_name(unwrap(model).config.model_type)


@MODEL_FAMILIES.register("generic", coords="0-1000", factor=28)
class Generic:
    """Any image-text-to-text model: its processor expands the vision placeholders and reads one clip per video;
    log-probs run on full sequences."""

    @staticmethod
    def video_inputs(processor, clip: VideoClip) -> tuple[list[VideoClip], list[float] | None]:
        """The clips the processor gets for one video, and the times to write before each (None: none)."""
        return [clip], None

    @staticmethod
    def check_vision_tokens(processor, batch, sample_ids: list[str]) -> None:
        """Nothing family-specific to check: the processor expands the placeholders itself."""


@MODEL_FAMILIES.register("qwen2_vl", coords="0-1000", factor=28, shared_prefix=True, pre_resized=True)
@MODEL_FAMILIES.register("qwen2_5_vl", coords="resized", factor=28, shared_prefix=True, pre_resized=True)
class QwenVL:
    """Qwen2-VL and Qwen2.5-VL: 3-D multimodal rope (temporal, height, width) from the backbone's
    ``get_rope_index``; one run of ``<|image_pad|>`` (``<|video_pad|>``) tokens per image (video). A video with
    ``model.video.timestamps`` goes in as its temporal patches, each after its start time as text (``<1.5s>``)."""

    @staticmethod
    def video_inputs(processor, clip: VideoClip) -> tuple[list[VideoClip], list[float] | None]:
        if not clip.timestamped:
            return [clip], None
        chunks = clip.chunks(processor.video_processor.temporal_patch_size)
        return chunks, [c.timestamps[0] for c in chunks]

    @staticmethod
    def check_vision_tokens(processor, batch, sample_ids: list[str]) -> None:
        check_vision_tokens(batch["input_ids"], batch.get("image_grid_thw"), batch.get("video_grid_thw"),
                            image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
                            merge_size=processor.image_processor.merge_size, sample_ids=sample_ids)

    @staticmethod
    def rope_positions(model, batch) -> torch.Tensor:
        """Multimodal rope position ids ``[3, P, L]`` of the prompts, as the model computes them."""
        position_ids, _ = unwrap(model).model.get_rope_index(
            batch["input_ids"], image_grid_thw=batch.get("image_grid_thw"),
            video_grid_thw=batch.get("video_grid_thw"), attention_mask=batch["attention_mask"],
            second_per_grid_ts=batch.get("second_per_grid_ts"), mm_token_type_ids=batch.get("mm_token_type_ids"),
        )
        return position_ids


@MODEL_FAMILIES.register("qwen3_5", coords="0-1000", factor=32, shared_prefix=True, pre_resized=True)
@MODEL_FAMILIES.register("qwen3_vl", coords="0-1000", factor=32, shared_prefix=True, pre_resized=True)
class Qwen3VL:
    """Qwen3-VL (and Qwen3.5, which shares its processor): 16-pixel patches merged 2x2, interleaved multimodal
    rope, and video as one clip whose processor writes each temporal patch's time as text (``<0.5 seconds>``)
    before its own run of ``<|video_pad|>`` tokens.

    Shared prefix: ``rope_positions`` is Qwen2-VL's call; the backbone's ``get_rope_index`` reads
    ``mm_token_type_ids`` (0 text, 1 image, 2 video), splits each video's grid row per temporal patch, and returns
    ``[3, P, L]`` ids (temporal, height, width; interleaving is in the rotary frequencies, not the ids), the rows
    the model's own forward computes without ``position_ids``. (``generate`` puts a text row first; the model reads
    it only to find packed sequences when no attention mask is given.) Deepstack visual features are added at the
    prompt's vision tokens, all inside the prefill; Qwen3.5's linear-attention conv and recurrent states are
    repeated with the KV cache (``rollout.shared.repeat_cache``)."""

    video_inputs = Generic.video_inputs  # one clip: the processor writes the times itself

    @staticmethod
    def check_vision_tokens(processor, batch, sample_ids: list[str]) -> None:
        """As Qwen2-VL's, with each video's grid row split per temporal patch: each patch is its own run."""
        grid = batch.get("video_grid_thw")
        if grid is not None:
            grid = torch.cat([row.new_tensor([1, row[1], row[2]]).repeat(int(row[0]), 1) for row in grid])
        check_vision_tokens(batch["input_ids"], batch.get("image_grid_thw"), grid,
                            image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
                            merge_size=processor.image_processor.merge_size, sample_ids=sample_ids)

    rope_positions = QwenVL.rope_positions
