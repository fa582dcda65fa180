"""What every diffusion algorithm shares: its interface, the training context, the sampled batch, the step result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.losses import group_advantages
from mmrl.diffusion.policy import Conditioning, DiffusionPolicy
from mmrl.diffusion.samplers import Trajectory, rollout


class DiffusionAlgorithm:
    """Base of the algorithms of ``mmrl.plugins.DIFFUSION_ALGORITHMS``: a class built as ``cls(cfg, args)`` from the
    run's ``DiffusionConfig`` and its ``algorithm_args`` (the registered ``config`` dataclass), whose
    ``step(ctx, prompts, generator) -> StepResult`` samples, scores and updates once. The defaults here are those
    of an algorithm without a reference model or state to resume."""

    needs_reference: bool = False
    """Reads ``ctx.policy.reference_model()`` (the trainer then keeps a frozen copy under full fine-tuning)."""

    def state_dict(self) -> dict:
        """The state a resumed run needs (e.g. DDPO's per-prompt statistics), saved with every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


@dataclass
class Context:
    """Everything an algorithm's step needs: config, policy, reward, optimiser (owned by the trainer)."""

    cfg: DiffusionConfig
    policy: DiffusionPolicy
    reward: object
    optimizer: torch.optim.Optimizer
    accelerator: object

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.denoiser.parameters() if p.requires_grad]

    def micro_batches(self, n: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Row indices of ``n`` samples in micro-batches (shuffled when a generator is given)."""
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        return list(order.split(self.cfg.optim.micro_batch_size))

    def optimizer_step(self) -> float:
        """Clip the gradient norm (when configured), step, zero; returns the pre-clip gradient norm."""
        max_norm = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


@dataclass
class Batch:
    """A step's sampled images: ``prompts[i]`` produced ``images[i]`` via ``trajectory`` rows ``i``; rows come in
    groups of ``group_size`` consecutive samples of one prompt."""

    prompts: list[str]
    cond: Conditioning
    group_size: int
    trajectory: Trajectory | None = None
    images: torch.Tensor | None = None
    total: torch.Tensor | None = None
    rewards: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepResult:
    """What a step hands back to the trainer for logging: the batch, advantages, and metrics."""

    batch: Batch
    advantages: torch.Tensor | None
    metrics: dict[str, float]


def expand_prompts(ctx: Context, prompts: list[str]) -> Batch:
    """``prompts`` each repeated ``images_per_prompt`` times, with their text conditioning."""
    g = ctx.cfg.optim.images_per_prompt
    return Batch([p for p in prompts for _ in range(g)], ctx.policy.encode(prompts).repeat(g), g)


@torch.no_grad()
def sample_and_score(ctx: Context, batch: Batch, generator: torch.Generator, stochasticity: float) -> Batch:
    """Roll out every row of ``batch`` without gradients (micro-batched), decode and score the final images."""
    policy, cfg = ctx.policy, ctx.cfg
    trajectories, images = [], []
    sampler = policy.sampler(cfg.sampling.steps, stochasticity)
    for rows in ctx.micro_batches(len(batch.prompts)):
        denoise = policy.denoiser_fn(batch.cond[rows], cfg.sampling.guidance_scale)
        noise = policy.noise(len(rows), cfg.model.resolution, generator)
        traj = rollout(denoise, sampler, noise, generator)
        trajectories.append(traj)
        images.append(policy.decode(traj.final))
    batch.trajectory = Trajectory(torch.cat([t.latents for t in trajectories]),
                                  torch.cat([t.log_probs for t in trajectories]), trajectories[0].timesteps)
    batch.images = torch.cat(images)
    batch.total, batch.rewards = ctx.reward(batch.images, batch.prompts)
    return batch


def sample_with_advantages(ctx: Context, prompts: list[str], generator: torch.Generator,
                           advantage_fn: Callable[[Batch], torch.Tensor],
                           clip: float) -> tuple[Batch, torch.Tensor]:
    """Sample and score ``images_per_prompt`` images per prompt with the training rollouts' noise, and turn the
    rewards into advantages with ``advantage_fn``, clipped to ±``clip``."""
    batch = sample_and_score(ctx, expand_prompts(ctx, prompts), generator, rollout_stochasticity(ctx))
    return batch, advantage_fn(batch).clamp(-clip, clip)


def group_advantage_fn(global_std: bool) -> Callable[[Batch], torch.Tensor]:
    """Group-relative advantages ``(r − mean_g)/std`` of a batch's rewards (``losses.group_advantages``; the std
    of the group, or of the whole batch with ``global_std``)."""
    return lambda batch: group_advantages(batch.total, batch.group_size, global_std)


def reward_metrics(batch: Batch) -> dict[str, float]:
    """``reward/mean``, ``reward/std`` and each component's mean."""
    out = {"reward/mean": batch.total.mean().item(), "reward/std": batch.total.std(unbiased=False).item()}
    out.update({f"reward/{name}": v.mean().item() for name, v in batch.rewards.items()})
    return out


def rollout_stochasticity(ctx: Context) -> float:
    """The training rollouts' noise: DDIM's η on DDIM pipelines, the SDE noise level a on flow-matching ones."""
    return ctx.cfg.sampling.eta if ctx.policy.kind == "sd" else ctx.cfg.sampling.noise_level
