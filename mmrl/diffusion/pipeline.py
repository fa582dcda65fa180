"""Diffusers pipelines as RL policies: load, add LoRA, encode prompts, denoise, decode.

``load_policy(cfg.model)`` loads any SD 1.x-style pipeline (UNet + DDIM-compatible scheduler, ε-, v- or
x0-prediction) or SD3-style pipeline (MMDiT transformer + ``FlowMatchEulerDiscreteScheduler``) through
``DiffusionPipeline.from_pretrained`` and wraps it in ``DiffusionPolicy``, which gives every algorithm the same
few calls: ``encode`` (frozen text encoders), ``denoiser_fn`` (one network call with classifier-free guidance),
``decode`` (VAE, differentiable), ``noise`` and ``sampler``. Only the denoiser trains: LoRA adapters through
diffusers' peft integration, or all of its weights.
"""
from __future__ import annotations

import copy
import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from mmrl.diffusion.config import DiffusionModelConfig
from mmrl.diffusion.losses import renoise
from mmrl.diffusion.samplers import DDIMSampler, Denoise, FlowSampler
from mmrl.errors import ConfigError
from mmrl.models.load import resolve_dtype

TINY = {"tiny-sd": "sd", "tiny-sd3": "sd3"}
"""``model.path`` values that build a tiny local pipeline, and its kind."""


def resolve_pipeline_path(cfg: DiffusionModelConfig) -> str:
    """``tiny-sd`` / ``tiny-sd3`` -> a cached tiny pipeline folder (built on first use, pre-trained for
    ``tiny_pretrain_steps``); a local folder must be a diffusers pipeline (``model_index.json``); anything else is
    passed on as a hub id."""
    if cfg.path in TINY:
        from mmrl.diffusion.tiny import make_tiny_diffusion

        pretrained = f"-p{cfg.tiny_pretrain_steps}" if cfg.tiny_pretrain_steps else ""
        folder = Path(cfg.cache_dir).expanduser() / "models" / f"{cfg.path}-r{cfg.resolution}{pretrained}"
        if not (folder / "model_index.json").is_file():  # make_tiny_diffusion publishes the folder atomically
            make_tiny_diffusion(folder, kind=TINY[cfg.path], resolution=cfg.resolution,
                                pretrain_steps=cfg.tiny_pretrain_steps)
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
    if getattr(pipe, "unet", None) is not None and hasattr(pipe.scheduler, "alphas_cumprod"):
        return "sd"
    if getattr(pipe, "transformer", None) is not None and "FlowMatch" in scheduler:
        return "sd3"
    raise ConfigError(f"unsupported pipeline {type(pipe).__name__} (scheduler {scheduler}): expected a UNet with a "
                      "DDIM-compatible scheduler (SD 1.x) or a transformer with a flow-matching scheduler (SD3)")


@dataclass
class Conditioning:
    """Text conditioning of a batch: token embeddings and (SD3) pooled embeddings."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def repeat(self, n: int) -> "Conditioning":
        """Each row repeated ``n`` times in a row (one prompt -> its ``n`` images)."""
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(n, 0)
        return Conditioning(self.embeds.repeat_interleave(n, 0), pooled)

    def __getitem__(self, rows) -> "Conditioning":
        return Conditioning(self.embeds[rows], None if self.pooled is None else self.pooled[rows])

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return Conditioning(torch.cat([p.embeds for p in parts]), pooled)


class DiffusionPolicy:
    """A pipeline whose denoiser is the policy; see the module docstring."""

    def __init__(self, pipe, kind: str, device: torch.device, lora: bool, max_sequence_length: int = 256):
        self.pipe, self.kind, self.device, self.lora = pipe, kind, device, lora
        self.max_sequence_length = max_sequence_length
        self.denoiser = pipe.unet if kind == "sd" else pipe.transformer
        self.reference: torch.nn.Module | None = None
        self._null: Conditioning | None = None

    # -- text -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """Frozen text-encoder embeddings of ``prompts`` (no guidance duplication)."""
        if self.kind == "sd":
            embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
            return Conditioning(embeds.float())
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, prompts, prompts, device=self.device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_sequence_length)
        return Conditioning(embeds.float(), pooled.float())

    def null(self, n: int) -> Conditioning:
        """The empty prompt's conditioning, ``n`` rows (the unconditional branch of guidance)."""
        if self._null is None:
            self._null = self.encode([""])
        return self._null.repeat(n)

    # -- denoiser -------------------------------------------------------------------------------------------
    def network(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One denoiser call; ``t`` is the sampler's model timestep (a scalar or one per row)."""
        t = t.expand(len(x)) if t.ndim == 0 else t
        autocast = torch.autocast("cuda", torch.bfloat16) if x.is_cuda else nullcontext()
        with autocast:
            if self.kind == "sd":
                out = net(x, t, encoder_hidden_states=cond.embeds).sample
            else:
                out = net(hidden_states=x, timestep=t, encoder_hidden_states=cond.embeds,
                          pooled_projections=cond.pooled).sample
        return out.float()

    def denoiser_fn(self, cond: Conditioning, guidance_scale: float = 1.0, net: torch.nn.Module | None = None) -> Denoise:
        """``f(x, t)``: the denoiser's output for ``cond``; with ``guidance_scale > 1`` classifier-free guidance
        ``u + w·(c − u)`` over one doubled batch."""
        net = self.denoiser if net is None else net

        def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if guidance_scale == 1.0:
                return self.network(net, x, t, cond)
            both = Conditioning.cat([self.null(len(x)), cond])
            u, c = self.network(net, torch.cat([x, x]), t, both).chunk(2)
            return u + guidance_scale * (c - u)

        return f

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor):
        """``mmrl.diffusion.losses.renoise`` with this pipeline's noise schedule: the noisy input, model timestep
        and pre-training target of clean latents ``x0`` at levels ``u`` in (0, 1)."""
        scheduler = self.pipe.scheduler
        prediction_type = getattr(scheduler.config, "prediction_type", "flow")
        return renoise(x0, noise, u, getattr(scheduler, "alphas_cumprod", None), prediction_type)

    @contextmanager
    def reference_model(self):
        """The frozen starting denoiser: adapters disabled under LoRA (same weights, no copy), else a frozen copy
        made by ``keep_reference``."""
        if self.lora:
            self.denoiser.disable_adapters()
            try:
                yield self.denoiser
            finally:
                self.denoiser.enable_adapters()
        else:
            if self.reference is None:
                raise RuntimeError("keep_reference() must be called before training without LoRA")
            yield self.reference

    def keep_reference(self) -> None:
        """Keep a frozen copy of the starting denoiser (full fine-tuning only; LoRA disables its adapters)."""
        if not self.lora and self.reference is None:
            self.reference = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    # -- latents and images ---------------------------------------------------------------------------------
    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        factor = self.pipe.vae_scale_factor
        if resolution % (factor * (2 if self.kind == "sd3" else 1)):
            raise ConfigError(f"model.resolution {resolution} must be a multiple of the VAE factor {factor}"
                              + (" times the patch size 2" if self.kind == "sd3" else ""))
        channels = self.denoiser.config.in_channels
        return channels, resolution // factor, resolution // factor

    def noise(self, n: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
        """Starting latents ``N(0, I)`` (DDIM's scheduler has ``init_noise_sigma`` 1 as well)."""
        shape = (n, *self.latent_shape(resolution))
        return torch.randn(shape, generator=generator, device=generator.device).to(self.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode to images in [0, 1], differentiable (AlignProp backpropagates the reward through it)."""
        vae = self.pipe.vae
        z = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        images = vae.decode(z.to(vae.dtype)).sample.float()
        return (images / 2 + 0.5).clamp(0, 1)

    def sampler(self, steps: int, stochasticity: float):
        """The step schedule of one sampling run: DDIM with η, or the flow SDE with noise level a (0: ODE)."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        if self.kind == "sd":
            return DDIMSampler(scheduler, steps, stochasticity)
        return FlowSampler(scheduler, steps, stochasticity)


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
    policy = DiffusionPolicy(pipe, kind, device, cfg.lora.enabled, cfg.max_sequence_length)
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
