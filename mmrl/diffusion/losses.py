"""Pure loss and advantage functions of the diffusion algorithms (tensors in, tensors out; tested on numbers)."""
from __future__ import annotations

from collections import deque

import torch


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017) on one denoising step per sample, as in DDPO/Flow-GRPO::

        ρ = exp(log π_θ(x_t' | x_t) − log π_old(x_t' | x_t))
        L = mean_i max(−A_i·ρ_i, −A_i·clip(ρ_i, 1 − ε, 1 + ε))

    Returns the loss and diagnostics (mean ratio, fraction clipped, approximate KL ½·mean((log ρ)²))."""
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = {"ratio": ratio.mean().item(), "clipfrac": ((ratio - 1).abs() > clip_range).float().mean().item(),
             "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean().item()}
    return loss, stats


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussian steps with the same std (Flow-GRPO's KL term), per sample::

        KL(N(μθ, s²) ‖ N(μref, s²)) = mean over elements of (μθ − μref)² / (2·s²)

    (averaged over elements like the log-probs; ``std`` holds one value per sample)."""
    sq = ((mean - ref_mean) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    return sq / (2 * std**2)


def group_advantages(rewards: torch.Tensor, group_size: int, global_std: bool = False,
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages over consecutive groups of ``group_size`` samples of one prompt (Flow-GRPO, AWM)::

        A_i = (r_i − mean_group) / (std + ε),   std = the group's std, or the whole batch's when ``global_std``

    (population std, as in Flow-GRPO's stat tracker)."""
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = rewards.std(unbiased=False) if global_std else groups.std(dim=1, unbiased=False, keepdim=True)
    return (centred / (std + eps)).reshape(-1)


class PerPromptStatTracker:
    """DDPO's per-prompt reward normalisation (Black et al. 2023, §5): each prompt keeps a buffer of its last
    ``buffer_size`` rewards; a new reward's advantage is ``(r − mean)/(std + 1e-6)`` over that buffer, or over the
    current batch while the prompt has fewer than ``min_count`` rewards. The buffers are part of the resumable
    trainer state (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        values = rewards.detach().double().cpu()
        advantages = torch.empty_like(values)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values[rows].tolist())
            pool = torch.tensor(list(buffer), dtype=torch.float64) if len(buffer) >= self.min_count else values
            advantages[rows] = (values[rows] - pool.mean()) / (pool.std(unbiased=False) + 1e-6)
        return advantages.to(rewards.dtype).to(rewards.device)

    def state_dict(self) -> dict:
        return {p: list(b) for p, b in self.buffers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {p: deque(v, maxlen=self.buffer_size) for p, v in state.items()}


def stratified_times(n: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n, k]`` noise levels in (0, 1): for each sample one uniform draw inside each of ``k`` equal bins
    (stratified sampling: every sample is trained at low, middle and high noise)."""
    u = torch.rand(n, k, generator=generator)
    return (torch.arange(k) + u) / k


def renoise(x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor, alphas_cumprod: torch.Tensor | None,
            prediction_type: str = "flow") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise clean samples ``x0`` at levels ``u`` in (0, 1) (one per row) as in pre-training; returns the noisy
    input, the model timestep and the regression target of the denoiser's output.

    * flow matching (``alphas_cumprod`` None): ``x_σ = (1 − σ)·x0 + σ·ε`` with σ = u, timestep ``1000·σ``,
      target the velocity ``ε − x0``;
    * DDPM (ᾱ table given): ``t = ⌊u·T⌋``, ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε``, target ``ε``
      (``epsilon``) or ``sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0`` (``v_prediction``).
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)
    if alphas_cumprod is None:
        sigma = u.reshape(shape)
        return (1 - sigma) * x0 + sigma * noise, u * 1000, noise - x0
    t = (u * len(alphas_cumprod)).long().clamp(max=len(alphas_cumprod) - 1)
    a = alphas_cumprod.to(x0.device)[t].reshape(shape)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if prediction_type == "epsilon":
        return x_t, t, noise
    if prediction_type == "v_prediction":
        return x_t, t, a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"AWM supports epsilon and v_prediction DDPM models, not {prediction_type!r}")


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The pre-training loss of each sample: ``mean over elements (fθ(x_t) − target)²`` (``renoise`` gives the
    target)."""
    return ((prediction - target) ** 2).mean(dim=tuple(range(1, prediction.ndim)))


def awm_loss(prediction: torch.Tensor, target: torch.Tensor, advantages: torch.Tensor,
             base_prediction: torch.Tensor | None = None, reg_weight: float = 0.0) -> torch.Tensor:
    """Advantage-weighted matching (AWM, Xue et al. 2025, "Advantage Weighted Matching: Aligning RL with
    Pretraining in Diffusion Models") on re-noised final samples (``renoise``)::

        L = mean_i A_i · mean_elements (fθ(x_t) − target)²  +  λ · mean (fθ − f_base)²

    The first term is the model's own pre-training loss (flow matching: target ``ε − x0``; DDPM: ``ε``) on its
    samples, weighted per sample by the advantage: likelihood goes up for better-than-average samples and down
    for worse ones. The second keeps the output near the base model's."""
    loss = (advantages * denoising_loss(prediction, target)).mean()
    if base_prediction is not None and reg_weight > 0:
        loss = loss + reg_weight * ((prediction - base_prediction) ** 2).mean()
    return loss
