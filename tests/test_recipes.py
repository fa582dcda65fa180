"""Every real recipe under configs/ (not the tiny defaults): its config loads, and its model settings (LoRA, frozen
vision tower, gradient checkpointing) take effect through the real loading code (``load_policy``) on a tiny
checkpoint of the recipe's own model family, the one its ``model.path`` names. Hubs are unreachable here, so the
checkpoint is tiny, but the family, its adapter and its module names are the real ones.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from mmrl.config import TrainConfig, load_config, read_yaml
from mmrl.models.families import family_of, unwrap
from mmrl.models.load import load_policy, vision_tower
from mmrl.models.tiny import FAMILIES, make_tiny
from mmrl.plugins import MODEL_FAMILIES, TASKS

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.name != "tiny.yaml" and p.parent.name != "diffusion")
"""The VLM recipes: ``configs/<task>/<name>.yaml`` (diffusion recipes are another config, ``configs/diffusion``)."""

FAMILY_OF_CHECKPOINT = [
    (r"Qwen2\.5-VL", "qwen2_5_vl"),
    (r"Qwen2-VL", "qwen2_vl"),
    (r"Qwen3-VL", "qwen3_vl"),
    (r"Qwen3\.5", "qwen3_5"),
    (r"SmolVLM", "smolvlm"),
]
"""Hub checkpoint name -> the tiny family (``config.model_type``) standing in for it."""

PIXEL_KEYS = ("min_pixels", "max_pixels")
VIDEO_PIXEL_KEYS = ("min_pixels", "max_pixels", "total_pixels")


def family_for(checkpoint: str) -> str:
    matches = [family for pattern, family in FAMILY_OF_CHECKPOINT if re.search(pattern, checkpoint)]
    assert len(matches) == 1, f"no tiny family stands in for {checkpoint!r}: add it to FAMILY_OF_CHECKPOINT"
    return matches[0]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(family)``: a tiny checkpoint folder of ``family``, built once per module."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny(tmp_path_factory.mktemp(f"tiny-{family}"), family=family, size="tiny")
        return built[family]

    return get


def test_the_recipes_are_found():
    names = {str(p.relative_to(REPO / "configs")) for p in RECIPES}
    assert {"gui_grounding/qwen2_5_vl_3b.yaml", "gui_grounding/qwen2_5_vl_3b_full.yaml",
            "gui_grounding/qwen3_vl_4b.yaml", "temporal_grounding/qwen2_5_vl_3b.yaml",
            "temporal_grounding/qwen2_5_vl_7b.yaml", "temporal_grounding/qwen3_vl_8b.yaml",
            "detection/qwen2_5_vl_3b.yaml", "detection/qwen3_vl_4b.yaml", "rec/qwen2_5_vl_3b.yaml",
            "rec/qwen3_vl_4b.yaml", "cad_code/qwen2_5_vl_3b.yaml", "cad_code/qwen3_vl_4b.yaml"} <= names
    assert set(family for _, family in FAMILY_OF_CHECKPOINT) <= set(FAMILIES)


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "configs")) for p in RECIPES])
def test_recipe_loads_its_model_as_configured(path, tiny_checkpoint):
    task = path.parent.name
    assert task in TASKS, f"{path}: the folder names no registered task"
    cfg = load_config(TrainConfig, path, [f"task={task}"])
    family = family_for(cfg.model.path)

    # Pixel budgets the recipe sets are whole numbers of the family's visual tokens (factor x factor pixels).
    raw = read_yaml(path).get("model", {})
    factor = MODEL_FAMILIES.capability(family, "factor")
    budgets = {k: raw[k] for k in PIXEL_KEYS if k in raw}
    budgets |= {f"video.{k}": raw["video"][k] for k in VIDEO_PIXEL_KEYS if k in raw.get("video", {})}
    for key, value in budgets.items():
        assert value % factor**2 == 0, f"{path}: model.{key}={value} is not a multiple of {factor}x{factor}"

    # The recipe's model settings on a tiny checkpoint of its family, on CPU: float32, and sdpa (or transformers'
    # choice) where the recipe asks for flash attention, which needs CUDA.
    attn = cfg.model.attn_implementation
    if attn is not None and attn.startswith("flash"):
        attn = "sdpa"
    model_cfg = dataclasses.replace(cfg.model, path=str(tiny_checkpoint(family)), dtype="float32",
                                    attn_implementation=attn)
    model, _, _ = load_policy(model_cfg)
    base = unwrap(model)
    assert base.config.model_type == family and family_of(model) == family  # its own adapter, not the generic one
    assert base.dtype == torch.float32

    visual = vision_tower(model)
    assert visual is not None
    visual_ids = {id(p) for p in visual.parameters()}
    if cfg.model.freeze_vision:
        assert not any(p.requires_grad for p in visual.parameters()), f"{path}: the vision tower is not frozen"
    assert base.is_gradient_checkpointing == cfg.model.gradient_checkpointing

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if cfg.model.lora.enabled:
        assert isinstance(model, PeftModel)
        lora = model.peft_config["default"]
        assert (lora.r, lora.lora_alpha) == (cfg.model.lora.r, cfg.model.lora.alpha)
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        assert layers, f"{path}: LoRA is on but no layer got an adapter"
        assert trainable and all("lora_" in name for name in trainable), "only the adapters train under LoRA"
        suffixes = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}
        assert suffixes <= set(cfg.model.lora.target_modules)
        if cfg.model.freeze_vision:  # no adapters inside the frozen tower
            assert not any(isinstance(m, LoraLayer) for m in visual.modules())
    else:
        assert not isinstance(model, PeftModel)
        assert not any("lora_" in name for name in trainable)
        language = [p for p in base.parameters() if id(p) not in visual_ids]
        assert language and all(p.requires_grad for p in language), "full fine-tuning trains the language model"
