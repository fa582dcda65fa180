"""A diffusers pipeline as an RL policy: ``DiffusionPolicy`` gives every algorithm the same few calls.

``encode`` (frozen text encoders), ``denoiser_fn`` (one network call with classifier-free guidance), ``decode``
(VAE, differentiable), ``noise``, ``sampler``, ``renoise`` (the pre-training loss's noisy inputs) and
``reference_model`` (the frozen starting denoiser), for SD 1.x-style pipelines (UNet + DDIM) and SD3-style ones
(MMDiT transformer + flow matching) alike. ``mmrl.diffusion.pipeline.load_policy`` builds one from a config.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from mmrl.diffusion.losses import renoise
from mmrl.diffusion.samplers import DDIMSampler, Denoise, FlowSampler
from mmrl.errors import ConfigError
from mmrl.reference import reference_context


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

    def __init__(self, pipe, kind: str, device: torch.device, max_sequence_length: int = 256):
        self.pipe, self.kind, self.device = pipe, kind, device
        self.max_sequence_length = max_sequence_length
        self.denoiser = pipe.unet if kind == "sd" else pipe.transformer
        self.reference: torch.nn.Module | None = None
        """The frozen starting denoiser under full fine-tuning (``mmrl.reference.frozen_reference``, set by the
        trainer when the algorithm needs a reference); ``None`` under LoRA."""
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

    def denoiser_fn(self, cond: Conditioning, guidance_scale: float = 1.0,
                    net: torch.nn.Module | None = None) -> Denoise:
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
        """The frozen starting denoiser (``mmrl.reference``): this denoiser with its adapters disabled under LoRA
        (same weights, no copy), else the frozen copy ``reference``."""
        ref, disabled = reference_context(self.denoiser, self.reference)
        with disabled:
            yield ref

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
