"""Clipped policy-gradient updates over stored denoising trajectories: the update DDPO and Flow-GRPO share.

Each denoising step of a stored trajectory is an action with a Gaussian log-prob (``mmrl.diffusion.samplers``).
For ``mu`` epochs: shuffle the samples, draw ``timestep_fraction`` of each trajectory's stochastic steps
(``sampling.sde_window``, default all) in random order,
re-score the stored transition ``x_t -> x_t'`` under the current denoiser, and minimise PPO's clipped surrogate
(plus, with β > 0, the Gaussian-mean KL to the reference denoiser). Gradients accumulate over the whole batch
and every drawn step, then one optimiser step ends the epoch — so in the first epoch the ratio is 1 up to
floating-point noise.
"""
from __future__ import annotations

from typing import Callable

import torch

from mmrl.diffusion.algorithms.base import Batch, Context, StepResult, reward_metrics, rollout_stochasticity, \
    sample_with_advantages
from mmrl.diffusion.losses import gaussian_mean_kl, ppo_clip_loss


def policy_gradient_step(ctx: Context, prompts: list[str], generator: torch.Generator,
                         advantage_fn: Callable[[Batch], torch.Tensor], beta: float = 0.0) -> StepResult:
    """Sample and score ``images_per_prompt`` images per prompt with log-probs, turn rewards into advantages with
    ``advantage_fn`` (clipped to ±``ppo.adv_clip_max``), then run ``ppo_update``."""
    batch, advantages = sample_with_advantages(ctx, prompts, generator, advantage_fn, ctx.cfg.ppo.adv_clip_max)
    metrics = ppo_update(ctx, batch, advantages, generator, beta)
    return StepResult(batch, advantages, {**reward_metrics(batch), **metrics})


def step_logprob(ctx: Context, batch: Batch, rows: torch.Tensor, idx: torch.Tensor, sampler, net=None):
    """Re-score the stored transition at step ``idx[j]`` of row ``rows[j]`` under ``net`` (default: the policy)."""
    traj = batch.trajectory
    x, x_next = traj.latents[rows, idx], traj.latents[rows, idx + 1]
    denoise = ctx.policy.denoiser_fn(batch.cond[rows], ctx.cfg.sampling.guidance_scale, net)
    return sampler.step(idx, denoise(x, sampler.model_time(idx)), x, prev_sample=x_next)


def ppo_update(ctx: Context, batch: Batch, advantages: torch.Tensor, generator: torch.Generator,
               beta: float = 0.0) -> dict[str, float]:
    """``ctx.cfg.ppo.mu`` epochs of clipped updates on ``batch``; returns the mean diagnostics."""
    cfg = ctx.cfg.ppo
    traj = batch.trajectory
    n = len(traj.log_probs)
    window = ctx.cfg.sampling.stochastic_steps()
    k = max(1, round(len(window) * cfg.timestep_fraction))
    sampler = ctx.policy.sampler(ctx.cfg.sampling.steps, rollout_stochasticity(ctx))
    records: list[dict[str, float]] = []
    grad_norms = []
    for _ in range(cfg.mu):
        for rows in ctx.micro_batches(n, generator):
            order = window.start + torch.stack([torch.randperm(len(window), generator=generator)[:k] for _ in rows])
            for j in range(k):
                idx = order[:, j]
                step = step_logprob(ctx, batch, rows, idx, sampler)
                loss, stats = ppo_clip_loss(step.log_prob, traj.log_probs[rows, idx], advantages[rows], cfg.clip_range)
                if beta > 0:
                    with torch.no_grad(), ctx.policy.reference_model() as ref:
                        ref_step = step_logprob(ctx, batch, rows, idx, sampler, ref)
                    kl = gaussian_mean_kl(step.mean, ref_step.mean, step.std).mean()
                    loss = loss + beta * kl
                    stats["kl"] = kl.item()
                ctx.backward(loss, len(rows) / (n * k))
                records.append({"loss": loss.item(), **stats})
        grad_norms.append(ctx.optimizer_step())
    return {**mean_records(records), "grad_norm": sum(grad_norms) / len(grad_norms)}


def mean_records(records: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of diagnostics dicts."""
    return {key: sum(r[key] for r in records) / len(records) for key in records[0]}
