"""AWM, Advantage Weighted Matching (Xue et al. 2025): policy gradient for flow models through the
pre-training loss instead of sampler log-probs.

Per step: sample G images per prompt (any sampler; here the training rollouts' SDE / DDIM), score them, group
advantages clipped to ±``adv_clip_max``; then re-noise each final latent ``x0`` at ``timesteps_per_sample``
stratified noise levels (``x_σ = (1 − σ)·x0 + σ·ε`` for flow models; the DDPM forward process for ε- or
v-prediction UNets) and minimise the advantage-weighted pre-training loss with a small regulariser to the base
model's output (``mmrl.diffusion.losses.renoise`` / ``awm_loss``). Training never replays the sampling
trajectory, so sampling and training are decoupled (the source of AWM's speed-up). The paper targets flow
models (SD3.5); the DDPM form is the same objective for SD 1.x.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.diffusion.algorithms.base import Context, DiffusionAlgorithm, StepResult, group_advantage_fn, \
    reward_metrics, sample_with_advantages
from mmrl.diffusion.algorithms.policy_gradient import mean_records
from mmrl.diffusion.losses import awm_loss, stratified_times
from mmrl.plugins import DIFFUSION_ALGORITHMS


@dataclass
class AWMConfig:
    timesteps_per_sample: int = 4
    """Noise levels per final image, stratified over (0, 1): one uniform draw in each of this many bins."""
    reg_weight: float = 0.01
    """Weight of the velocity regulariser mean((vθ − v_base)²) to the base model."""
    global_std: bool = False
    """Normalise advantages by the std of the whole batch instead of the group's."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to ±this."""


@DIFFUSION_ALGORITHMS.register("awm", config=AWMConfig)
class AWM(DiffusionAlgorithm):
    def __init__(self, cfg, args: AWMConfig):
        self.args = args
        self.needs_reference = args.reg_weight > 0

    def step(self, ctx: Context, prompts: list[str], generator: torch.Generator) -> StepResult:
        batch, advantages = sample_with_advantages(ctx, prompts, generator, group_advantage_fn(self.args.global_std),
                                                   self.args.adv_clip_max)
        x0 = batch.trajectory.final
        n, k = len(x0), self.args.timesteps_per_sample
        levels = stratified_times(n, k, generator)
        records = []
        for rows in ctx.micro_batches(n, generator):
            for j in range(k):
                noise = torch.randn(x0[rows].shape, generator=generator).to(x0.device)
                x_t, t, target = ctx.policy.renoise(x0[rows], noise, levels[rows, j].to(x0.device))
                prediction = ctx.policy.denoiser_fn(batch.cond[rows])(x_t, t)
                base = None
                if self.args.reg_weight > 0:
                    with torch.no_grad(), ctx.policy.reference_model() as ref:
                        base = ctx.policy.denoiser_fn(batch.cond[rows], net=ref)(x_t, t)
                loss = awm_loss(prediction, target, advantages[rows].to(x0.device), base, self.args.reg_weight)
                ctx.backward(loss, len(rows) / (n * k))
                records.append({"loss": loss.item()})
        metrics = {**mean_records(records), "grad_norm": ctx.optimizer_step()}
        return StepResult(batch, advantages, {**reward_metrics(batch), **metrics})
