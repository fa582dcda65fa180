"""Load a VLM policy (``AutoModelForImageTextToText`` + ``AutoProcessor``), with LoRA or full fine-tuning."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from mmrl.config import ModelConfig
from mmrl.errors import ConfigError
from mmrl.models.families import family_name, model_type_of, unwrap
from mmrl.models.kernels import use_fast_kernels
from mmrl.models.tiny import VISION_PLACEHOLDERS, make_tiny
from mmrl.store import build_once

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(cfg: ModelConfig) -> str:
    """``tiny`` -> a cached tiny checkpoint folder (built on first use); anything else is returned as is."""
    if cfg.path != "tiny":
        return cfg.path
    theta = "" if cfg.tiny_rope_theta is None else f"-theta{cfg.tiny_rope_theta:g}"
    folder = Path(cfg.cache_dir).expanduser() / "models" / f"tiny-{cfg.tiny_family}-{cfg.tiny_size}{theta}"
    build = partial(make_tiny, family=cfg.tiny_family, size=cfg.tiny_size, rope_theta=cfg.tiny_rope_theta)
    return str(build_once(folder, build, ("config.json", "processor_config.json")))


def model_family(cfg: ModelConfig) -> str:
    """The family adapter of ``cfg``'s checkpoint, without building or loading it: ``tiny_family`` for ``tiny``,
    else the checkpoint config's ``model_type`` (``generic`` when no adapter serves it)."""
    return family_name(cfg.tiny_family if cfg.path == "tiny" else model_type_of(cfg.path))


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"config key 'model.dtype': unknown dtype {name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def vision_tower(model) -> torch.nn.Module | None:
    """The vision encoder (with its merger) of a transformers VLM (or a peft wrapper of one), whatever the
    attribute is called."""
    model = unwrap(model)  # peft PeftModel: look inside, not at the wrapper's own attributes
    for holder in (model, getattr(model, "model", None)):
        for name in ("visual", "vision_tower", "vision_model"):
            module = getattr(holder, name, None) if holder is not None else None
            if isinstance(module, torch.nn.Module):
                return module
    return None


def load_processor(path: str, cfg: ModelConfig):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return processor


def placeholder_ids(tokenizer) -> list[int]:
    """Ids of the vision placeholder tokens the tokenizer knows; sampling suppresses them."""
    unk = tokenizer.unk_token_id
    ids = {tokenizer.convert_tokens_to_ids(t) for t in VISION_PLACEHOLDERS}
    return sorted(i for i in ids if i is not None and i != unk)


def _lora_targets(model, cfg: ModelConfig) -> list[str]:
    """Full module names of linear layers matching ``target_modules`` (skipping the vision tower if frozen)."""
    visual = vision_tower(model)
    skip = {id(m) for m in visual.modules()} if visual is not None and cfg.freeze_vision else set()
    suffixes = tuple(cfg.lora.target_modules)
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in suffixes and id(m) not in skip
    ]


def check_image_text_to_text(path: str) -> None:
    """``ConfigError`` naming the checkpoint's ``model_type`` when transformers has no image-text-to-text class for
    it (a text-only LM, a detector, ...): mmrl trains vision-language models."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = model_type_of(path)
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ConfigError(f"model {path}: model type {model_type!r} is not an image-text-to-text model "
                          "(AutoModelForImageTextToText has no class for it); mmrl trains vision-language models")


def load_policy(cfg: ModelConfig):
    """Load model and processor; apply LoRA / freezing / gradient checkpointing as configured.

    Returns ``(model, processor, path)``. With LoRA the model is a peft ``PeftModel`` whose
    ``disable_adapter()`` context gives the reference policy without a second copy in memory.
    """
    from transformers import AutoModelForImageTextToText

    path = resolve_path(cfg)
    check_image_text_to_text(path)
    kwargs = {"dtype": resolve_dtype(cfg.dtype)}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    use_fast_kernels(model)
    processor = load_processor(path, cfg)
    if cfg.freeze_vision and (visual := vision_tower(model)) is not None:
        visual.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=_lora_targets(model, cfg),
        )
        model = get_peft_model(model, lora)
    return model, processor, path
