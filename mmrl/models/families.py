"""Model-family adapters, chosen by the checkpoint's ``config.model_type``: the one place that knows a family.

An adapter is a class registered in ``mmrl.plugins.MODEL_FAMILIES`` under each ``model_type`` it serves, with
its capabilities declared there (today: whether the group-shared prefix works for it, whose prompt positions it
computes with ``rope_positions``). A model type without an adapter gets ``Generic``: full sequences only.
"""
from __future__ import annotations

import torch
from peft import PeftModel

from mmrl.plugins import MODEL_FAMILIES


def unwrap(model) -> torch.nn.Module:
    """The transformers model under any DDP (``.module``) and peft wrapper."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.get_base_model() if isinstance(model, PeftModel) else model


def family_of(model) -> str:
    """The registered family of ``model`` (its ``config.model_type``), or ``generic``."""
    model_type = unwrap(model).config.model_type
    return model_type if model_type in MODEL_FAMILIES else "generic"


@MODEL_FAMILIES.register("generic")
class Generic:
    """Any ``AutoModelForImageTextToText``: prompts and completions go through the model as full sequences."""


@MODEL_FAMILIES.register("qwen2_5_vl", shared_prefix=True)
@MODEL_FAMILIES.register("qwen2_vl", shared_prefix=True)
class QwenVL:
    """Qwen2-VL and Qwen2.5-VL: 3-D multimodal rope (temporal, height, width) computed by the backbone."""

    @staticmethod
    def rope_positions(model, batch) -> torch.Tensor:
        """Multimodal rope position ids ``[3, P, L]`` of the prompts, as the model computes them."""
        position_ids, _ = unwrap(model).model.get_rope_index(
            batch["input_ids"], image_grid_thw=batch.get("image_grid_thw"),
            video_grid_thw=batch.get("video_grid_thw"), attention_mask=batch["attention_mask"],
            second_per_grid_ts=batch.get("second_per_grid_ts"), mm_token_type_ids=batch.get("mm_token_type_ids"),
        )
        return position_ids
