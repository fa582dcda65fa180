"""Loading diffusers pipelines as RL policies (``mmrl.diffusion.policy.DiffusionPolicy``).

``load_policy(cfg.model)`` loads any SD 1.x-style pipeline (UNet + DDIM-compatible scheduler, ε-, v- or
x0-prediction) or SD3-style pipeline (MMDiT transformer + ``FlowMatchEulerDiscreteScheduler``) through
``DiffusionPipeline.from_pretrained`` (``tiny-sd`` / ``tiny-sd3`` are built locally first, ``mmrl.diffusion.tiny``),
freezes everything but the denoiser and wraps it in ``DiffusionPolicy``. Only the denoiser trains: LoRA adapters
through diffusers' peft integration, or all of its weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mmrl.diffusion.config import DiffusionModelConfig
from mmrl.diffusion.policy import DiffusionPolicy
from mmrl.diffusion.tiny import make_tiny_diffusion
from mmrl.errors import ConfigError
from mmrl.models.load import resolve_dtype

TINY = {"tiny-sd": "sd", "tiny-sd3": "sd3"}
"""``model.path`` values that build a tiny local pipeline, and its kind."""


def resolve_pipeline_path(cfg: DiffusionModelConfig) -> str:
    """``tiny-sd`` / ``tiny-sd3`` -> a cached tiny pipeline folder (built on first use, pre-trained for
    ``tiny_pretrain_steps`` on ``tiny_world``, its VAE for ``tiny_vae_steps``; each setting names the folder); a local folder must be a diffusers pipeline (``model_index.json``); anything else is
    passed on as a hub id."""
    if cfg.path in TINY:
        pretrained = f"-p{cfg.tiny_pretrain_steps}" if cfg.tiny_pretrain_steps else ""
        pretrained += f"-v{cfg.tiny_vae_steps}" if cfg.tiny_vae_steps else ""
        pretrained += f"-{cfg.tiny_world}" if cfg.tiny_world != "discs" and cfg.tiny_pretrain_steps else ""
        folder = Path(cfg.cache_dir).expanduser() / "models" / f"{cfg.path}-r{cfg.resolution}{pretrained}"
        if not (folder / "model_index.json").is_file():  # make_tiny_diffusion publishes the folder atomically
            make_tiny_diffusion(folder, kind=TINY[cfg.path], resolution=cfg.resolution,
                                pretrain_steps=cfg.tiny_pretrain_steps, world=cfg.tiny_world,
                                vae_steps=cfg.tiny_vae_steps)
        return str(folder)
    path = Path(cfg.path).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        raise ConfigError(f"model.path {cfg.path} is not a diffusers pipeline folder (no model_index.json); "
                          f"give a folder written by DiffusionPipeline.save_pretrained, a hub id, or one of "
                          f"{', '.join(TINY)}")
    return str(path) if path.exists() else cfg.path


def pipeline_kind(pipe) -> str:
    """``sd`` for a UNet with a DDPM-family scheduler, ``sd3`` for a transformer with a flow-matching one."""
    scheduler = type(pipe.scheduler).__name__
    denoisers = {name for name in ("unet", "transformer") if pipe.components.get(name) is not None}
    if denoisers == {"unet"} and "FlowMatch" not in scheduler:
        return "sd"
    if denoisers == {"transformer"} and "FlowMatch" in scheduler:
        return "sd3"
    raise ConfigError(f"unsupported pipeline {type(pipe).__name__} (scheduler {scheduler}): expected a UNet with a "
                      "DDIM-compatible scheduler (SD 1.x) or a transformer with a flow-matching scheduler (SD3)")


def absent_components(path: str) -> dict[str, None]:
    """``{name: None}`` for every component a local ``model_index.json`` records as ``[null, null]``, to pass to
    ``from_pretrained``. diffusers loads a null component as ``None`` only when the pipeline lists it as optional;
    SD3 does not list T5, so a folder without it (the tiny sd3 pipeline, or SD3.5 with T5 deleted) needs
    ``text_encoder_3=None, tokenizer_3=None`` — diffusers' documented way of dropping T5. A hub id gives ``{}``."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{index}: not valid JSON ({e})") from None
    return {name: None for name, value in entries.items() if value == [None, None]}


def load_policy(cfg: DiffusionModelConfig, device: torch.device | None = None) -> DiffusionPolicy:
    """Load the pipeline, freeze everything but the denoiser, add LoRA adapters when enabled."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_pipeline_path(cfg)
    dtype = resolve_dtype(cfg.dtype) if device.type == "cuda" else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, **absent_components(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path {cfg.path}: cannot load a diffusers pipeline: {e}") from None
    kind = pipeline_kind(pipe)
    if kind == "sd" and not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    policy = DiffusionPolicy(pipe, kind, device, cfg.max_sequence_length)
    _make_trainable(policy.denoiser, cfg)
    return policy


def _make_trainable(denoiser: torch.nn.Module, cfg: DiffusionModelConfig) -> None:
    if cfg.lora.enabled:
        from peft import LoraConfig

        config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, init_lora_weights="gaussian",
                            target_modules=cfg.lora.target_modules)
        try:
            denoiser.add_adapter(config)
        except ValueError as e:
            raise ConfigError(f"model.lora.target_modules {cfg.lora.target_modules}: {e}") from None
        for p in denoiser.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        denoiser.float().requires_grad_(True)
    if not any(p.requires_grad for p in denoiser.parameters()):
        raise ConfigError(f"model.lora.target_modules {cfg.lora.target_modules} matched no module of the denoiser")
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
