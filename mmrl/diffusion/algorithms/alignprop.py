"""AlignProp (Prabhudesai et al. 2023, "Aligning Text-to-Image Diffusion Models with Reward Backpropagation").

Per step: sample images with the deterministic sampler (DDIM η = 0, or the flow ODE), keeping the graph of
the last K denoiser calls only (the state entering them is detached: truncated backpropagation), each call
checkpointed so its activations are recomputed in the backward pass; decode with the VAE and maximise the
differentiable reward: ``L = −mean_i r(decode(x0_i))``. K is fixed (``algorithm_args.grad_steps``) or drawn
per rollout uniformly from 1..K (``random_grad_steps``), AlignProp's randomised truncation. Needs a differentiable
reward; LoRA on the denoiser as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.diffusion.algorithms.base import Context, DiffusionAlgorithm, StepResult, expand_prompts, reward_metrics
from mmrl.diffusion.algorithms.policy_gradient import mean_records
from mmrl.diffusion.samplers import rollout
from mmrl.plugins import DIFFUSION_ALGORITHMS


@dataclass
class AlignPropConfig:
    grad_steps: int = 1
    """K: gradients flow only through the last K denoising steps (AlignProp's truncated backprop)."""
    random_grad_steps: bool = False
    """Draw K per rollout uniformly from 1..grad_steps instead of using it fixed."""


def truncation(max_steps: int, random: bool, generator: torch.Generator) -> int:
    """K for one rollout: ``max_steps``, or uniform on 1..max_steps when ``random``."""
    return int(torch.randint(1, max_steps + 1, (1,), generator=generator)) if random else max_steps


@DIFFUSION_ALGORITHMS.register("alignprop", config=AlignPropConfig, differentiable_reward=True)
class AlignProp(DiffusionAlgorithm):
    def __init__(self, cfg, args: AlignPropConfig):
        self.args = args

    def step(self, ctx: Context, prompts: list[str], generator: torch.Generator) -> StepResult:
        batch = expand_prompts(ctx, prompts)
        policy, n = ctx.policy, len(batch.prompts)
        images, totals, components, records = [], [], [], []
        for rows in ctx.micro_batches(n):
            k = truncation(self.args.grad_steps, self.args.random_grad_steps, generator)
            denoise = policy.denoiser_fn(batch.cond[rows], ctx.cfg.sampling.guidance_scale)
            noise = policy.noise(len(rows), ctx.cfg.model.resolution, generator)
            traj = rollout(denoise, policy.sampler(ctx.cfg.sampling.steps, 0.0), noise, generator, grad_steps=k)
            decoded = policy.decode(traj.final)
            total, parts = ctx.reward(decoded, [batch.prompts[i] for i in rows])
            loss = -total.mean()
            ctx.backward(loss, len(rows) / n)
            records.append({"loss": loss.item(), "grad_steps": float(k)})
            images.append(decoded.detach())
            totals.append(total.detach())
            components.append({name: v.detach() for name, v in parts.items()})
        batch.images, batch.total = torch.cat(images), torch.cat(totals)
        batch.rewards = {name: torch.cat([c[name] for c in components]) for name in components[0]}
        metrics = {**mean_records(records), "grad_norm": ctx.optimizer_step()}
        return StepResult(batch, None, {**reward_metrics(batch), **metrics})
