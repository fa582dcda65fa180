"""Denoising steps that also return the log-probability of the step they take, and the loops that use them.

Policy-gradient methods for diffusion (DDPO, Flow-GRPO) treat each denoising step as an action: the sampler
draws ``x_{t-1} ~ N(mean(x_t), std²)`` and the log-density of that draw is the action's log-probability. The
step functions here are written against diffusers' schedulers without modifying them (they read the noise
tables, ``alphas_cumprod`` or ``sigmas``, and never call ``scheduler.step``), so they work batched over
per-sample timesteps and can re-score a stored transition.

* ``ddim_step_with_logprob`` — DDIM (Song et al. 2021) with stochasticity ``eta`` as in DDPO (Black et al. 2023).
* ``flow_sde_step_with_logprob`` — Flow-GRPO's SDE (Liu et al. 2025) with the same marginals as the flow ODE.
* ``DDIMSampler`` / ``FlowSampler`` — the step schedule of one sampling run; ``sample_step`` takes one step of it
  (one denoiser call), ``rollout`` runs them all.

Every step also returns the clean-image prediction x̂0 it implies (``Step.pred_original_sample``), which FK
steering (``mmrl.diffusion.steering``) scores between steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, std²)`` per element, averaged over every dimension but the first (DDPO's convention:
    the mean, not the sum, keeps the scale independent of the image size)."""
    logp = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return logp.mean(dim=tuple(range(1, logp.ndim)))


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample tensor ``[B]`` (or a scalar) against ``like`` ``[B, ...]``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value


def _draw(mean: torch.Tensor, std: torch.Tensor, prev_sample: torch.Tensor | None,
          generator: torch.Generator | None, x0: torch.Tensor | None = None) -> "Step":
    """``prev_sample = mean + std·z`` (unless given) and its log-prob; a deterministic step (std = 0) has
    log-prob 0 by convention (it is not a random action). ``x0`` is the step's clean-image prediction."""
    if prev_sample is None:
        device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        prev_sample = mean + std * noise
    std_b = torch.broadcast_to(std.reshape(-1), (len(mean),))
    if bool((std_b > 0).all()):
        log_prob = gaussian_logprob(prev_sample, mean, std)
    else:
        log_prob = torch.zeros(len(mean), dtype=mean.dtype, device=mean.device)
    return Step(prev_sample, log_prob, mean, std_b, x0)


@dataclass
class Step:
    """One stochastic denoising step: the next state, its log-prob, the Gaussian it was drawn from, and the
    clean-image prediction x̂0 of the state it started from."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def ddim_step_with_logprob(scheduler, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
                           eta: float = 1.0, prev_sample: torch.Tensor | None = None,
                           generator: torch.Generator | None = None) -> Step:
    """DDIM step ``x_t -> x_{t-1}`` with its Gaussian log-prob (Song et al. 2021, eq. 12; DDPO's sampler).

    With ``ᾱ = scheduler.alphas_cumprod``, ``t' = t - T_train / n_steps`` and ε the model's noise prediction::

        x̂0   = (x_t − sqrt(1 − ᾱ_t)·ε) / sqrt(ᾱ_t)
        std   = η·sqrt((1 − ᾱ_t')/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_t'))
        mean  = sqrt(ᾱ_t')·x̂0 + sqrt(1 − ᾱ_t' − std²)·ε
        x_t'  = mean + std·z,   z ~ N(0, I)

    Differs from ``diffusers.DDIMScheduler.step``: ``timestep`` may hold one timestep per sample; it returns the
    log-prob of ``x_t'`` (averaged over elements), the mean and the std; ``prev_sample`` given re-scores a
    stored transition instead of drawing one; no sample clipping or thresholding; ``v_prediction`` and
    ``sample`` prediction types are converted to ε first. ``eta = 0`` is deterministic (log-prob 0).
    """
    timestep = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
    prev_t = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod.to(sample.device)
    a_t = _per_sample(alphas[timestep], sample)
    a_prev = _per_sample(torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)],
                                     scheduler.final_alpha_cumprod.to(sample.device)), sample)
    eps = _epsilon(scheduler.config.prediction_type, model_output, sample, a_t)
    x0 = (sample - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    return _draw(mean, std, prev_sample, generator, x0)


def _epsilon(prediction_type: str, output: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The noise ε implied by a model output of ``prediction_type`` at ``ᾱ_t`` (DDPM parameterisations)."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return a_t.sqrt() * output + (1 - a_t).sqrt() * sample
    if prediction_type == "sample":
        return (sample - a_t.sqrt() * output) / (1 - a_t).sqrt()
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def flow_sde_step_with_logprob(sigma: torch.Tensor, sigma_next: torch.Tensor, velocity: torch.Tensor,
                               sample: torch.Tensor, noise_level: float = 0.7, sigma_max: float | None = None,
                               prev_sample: torch.Tensor | None = None,
                               generator: torch.Generator | None = None) -> Step:
    """Flow-GRPO's SDE step (Liu et al. 2025, eq. 9) for a rectified-flow model ``x_σ = (1−σ)·x0 + σ·ε``, whose
    network predicts ``v = ε − x0`` (so the step's clean-image prediction is ``x̂0 = x − σ·v``). The SDE has the
    flow ODE's marginals; with noise level ``a``::

        std  = a·sqrt(σ / (1 − σ))           (σ = 1 in the denominator replaced by ``sigma_max``)
        dt   = σ_next − σ  (< 0)
        mean = x·(1 + std²/(2σ)·dt) + v·(1 + std²·(1 − σ)/(2σ))·dt
        x'   = mean + std·sqrt(−dt)·z,   z ~ N(0, I)

    and the log-prob is that of ``x'`` under ``N(mean, (std·sqrt(−dt))²)``, averaged over elements.
    ``sigma_max`` is the schedule's second sigma (Flow-GRPO uses ``sigmas[1]``), so the first step from σ = 1 has
    a finite std. Differs from ``FlowMatchEulerDiscreteScheduler.step`` (the deterministic Euler step
    ``x + v·dt``): it injects noise, returns the log-prob, mean and std, takes per-sample sigmas, and
    ``prev_sample`` re-scores a stored transition. ``noise_level = 0`` gives the Euler step (log-prob 0).
    """
    sigma, sigma_next = _per_sample(sigma, sample), _per_sample(sigma_next, sample)
    denominator = 1 - torch.where(sigma >= 1, torch.as_tensor(sigma_max if sigma_max is not None else 0.0,
                                                             dtype=sample.dtype, device=sample.device), sigma)
    std = noise_level * (sigma / denominator).sqrt()
    dt = sigma_next - sigma
    mean = (sample * (1 + std**2 / (2 * sigma) * dt)
            + velocity * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt)
    return _draw(mean, std * (-dt).sqrt(), prev_sample, generator, sample - sigma * velocity)


class _ScheduleSampler:
    """``steps`` steps of a diffusers scheduler's schedule, with a default stochasticity ``eta`` (DDIM's η or the
    flow SDE's noise level a) that ``step(..., eta=...)`` may override."""

    def __init__(self, scheduler, steps: int, eta: float):
        scheduler.set_timesteps(steps)
        self.scheduler, self.eta = scheduler, eta
        self.timesteps = scheduler.timesteps.clone()

    def model_time(self, i: int | torch.Tensor) -> torch.Tensor:
        """The timestep value the denoiser is conditioned on at step ``i`` (an int, or one index per sample)."""
        return self.timesteps[i]


class DDIMSampler(_ScheduleSampler):
    """DDIM over ``steps`` timesteps of a diffusers DDIM-compatible scheduler (its ``alphas_cumprod``)."""

    def __init__(self, scheduler, steps: int, eta: float = 1.0):
        super().__init__(scheduler, steps, eta)

    def step(self, i: int | torch.Tensor, output, sample, prev_sample=None, generator=None,
             eta: float | None = None) -> Step:
        """Step ``i`` (an int, or one step index per sample) from ``sample`` given the denoiser's ``output``."""
        eta = self.eta if eta is None else eta
        t = self.timesteps[i]
        t = t.expand(len(sample)) if t.ndim == 0 else t
        return ddim_step_with_logprob(self.scheduler, output, t, sample, eta, prev_sample, generator)


class FlowSampler(_ScheduleSampler):
    """Flow-matching sampling over ``steps`` sigmas of a ``FlowMatchEulerDiscreteScheduler`` (with its shift);
    noise level ``a`` > 0 takes Flow-GRPO's SDE steps, ``a = 0`` the deterministic Euler (ODE) steps."""

    def __init__(self, scheduler, steps: int, noise_level: float = 0.7):
        super().__init__(scheduler, steps, noise_level)
        self.sigmas = scheduler.sigmas.clone().float()

    def step(self, i: int | torch.Tensor, output, sample, prev_sample=None, generator=None,
             eta: float | None = None) -> Step:
        a = self.eta if eta is None else eta
        return flow_sde_step_with_logprob(self.sigmas[i], self.sigmas[i + 1], output, sample, a,
                                          float(self.sigmas[1]), prev_sample, generator)


Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(latents, t) -> model output`` for one batch (conditioning and guidance already bound)."""


@dataclass
class Trajectory:
    """A sampling run: ``latents[:, i]`` is the state before step ``i`` (``latents[:, -1]`` the final sample),
    ``log_probs[:, i]`` the log-prob of step ``i``'s draw, ``timesteps[i]`` its model timestep."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]


def sample_step(denoise: Denoise, sampler, i: int, x: torch.Tensor, generator: torch.Generator | None = None,
                eta: float | None = None) -> Step:
    """Step ``i`` of ``sampler`` from ``x``: one denoiser call at the step's model timestep, then the sampler's
    update (``rollout`` runs these; FK steering runs them with resampling in between)."""
    t = sampler.model_time(i).to(x.device)
    return sampler.step(i, denoise(x, t), x, generator=generator, eta=eta)


def rollout(denoise: Denoise, sampler, latents: torch.Tensor, generator: torch.Generator | None = None,
            grad_steps: int = 0, eta: float | None = None, checkpointed: bool = True,
            stochastic: range | None = None) -> Trajectory:
    """Run every step of ``sampler`` from ``latents``. Without gradients unless ``grad_steps = K > 0``: then
    the last K denoiser calls keep the graph (checkpointed to recompute activations in the backward pass) and
    the state entering them is detached, so gradients reach only those K steps (AlignProp's truncation).
    ``stochastic`` given: only those steps draw noise, the others are deterministic (η = 0, log-prob 0)."""
    n = len(sampler.timesteps)
    states, log_probs = [latents], []
    x = latents
    for i in range(n):
        with_grad = i >= n - grad_steps
        if with_grad and i == n - grad_steps:
            x = x.detach()
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            call = _checkpointed(denoise) if with_grad and checkpointed else denoise
            step = sample_step(call, sampler, i, x, generator, eta if stochastic is None or i in stochastic else 0.0)
        x = step.prev_sample
        states.append(x if with_grad else x.detach())
        log_probs.append(step.log_prob.detach())
    return Trajectory(torch.stack(states, dim=1), torch.stack(log_probs, dim=1), sampler.timesteps.clone())


def _checkpointed(denoise: Denoise) -> Denoise:
    """``denoise`` under activation checkpointing (activations recomputed in the backward pass)."""
    return lambda x, t: checkpoint(denoise, x, t, use_reentrant=False)
