"""What every diffusion algorithm shares: its interface, the training context, the sampled batch, the step result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate.utils import gather_object

from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.losses import group_advantages
from mmrl.diffusion.policy import Conditioning, DiffusionPolicy
from mmrl.diffusion.samplers import Trajectory, rollout
from mmrl.nonfinite import SkipGuard


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
    """Everything an algorithm's step needs: config, policy, reward, optimiser (owned by the trainer), the
    accelerator, whose ranks ``optimizer_step`` averages the gradients over, and the trainer's guard against
    non-finite updates."""

    cfg: DiffusionConfig
    policy: DiffusionPolicy
    reward: object
    optimizer: torch.optim.Optimizer
    accelerator: object
    guard: SkipGuard = field(default_factory=SkipGuard)
    """Decides whether ``optimizer_step`` applies an update; the trainer's counts the steps with a skipped one."""
    losses: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    """The losses ``backward`` accumulated since the last ``optimizer_step``."""

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.denoiser.parameters() if p.requires_grad]

    def micro_batches(self, n: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Row indices of ``n`` samples in micro-batches (shuffled when a generator is given)."""
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        return list(order.split(self.cfg.optim.micro_batch_size))

    def backward(self, loss: torch.Tensor, weight: float) -> None:
        """Accumulate the gradient of ``weight * loss`` for the next ``optimizer_step``, which skips its update if
        ``loss`` is not finite (a NaN term need not reach the gradient)."""
        self.losses.append(loss.detach())
        (loss * weight).backward()

    def optimizer_step(self) -> float:
        """Average the gradients over the ranks (``average_gradients``), clip the gradient norm (when configured),
        step, zero; returns the pre-clip gradient norm (the same on every rank). The step is skipped, the weights
        and optimiser moments left as they are, when the norm or a loss since the last step is NaN or infinite on
        any rank (``SkipGuard.allow``)."""
        average_gradients(self.params, self.accelerator)
        max_norm = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm > 0 else float("inf"))
        if self.guard.allow([*self.losses, norm], self.accelerator):
            self.optimizer.step()
        self.losses.clear()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


def average_gradients(params: list[torch.nn.Parameter], accelerator) -> None:
    """Replace every gradient by its mean over the data-parallel ranks: each rank differentiated the mean loss of
    its equal share of the step's prompts, so the mean is the whole step's gradient (what DDP computes; the
    algorithms' several forward passes per backward do not fit DDP's hooks). Every rank runs the same graph, so
    the same parameters have gradients. Nothing to do in one process."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, "mean"))


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
    stochastic = cfg.sampling.stochastic_steps()
    group_noise = None
    if cfg.sampling.shared_noise:  # one x_T per group (sampling.shared_noise)
        group_noise = policy.noise(len(batch.prompts) // batch.group_size, cfg.model.resolution, generator)
        group_noise = group_noise.repeat_interleave(batch.group_size, dim=0)
    for rows in ctx.micro_batches(len(batch.prompts)):
        denoise = policy.denoiser_fn(batch.cond[rows], cfg.sampling.guidance_scale)
        noise = group_noise[rows] if group_noise is not None else policy.noise(len(rows), cfg.model.resolution,
                                                                                generator)
        traj = rollout(denoise, sampler, noise, generator, stochastic=stochastic)
        trajectories.append(traj)
        images.append(policy.decode(traj.final))
    batch.trajectory = Trajectory(torch.cat([t.latents for t in trajectories]),
                                  torch.cat([t.log_probs for t in trajectories]), trajectories[0].timesteps)
    batch.images = torch.cat(images)
    batch.total, batch.rewards = ctx.reward(batch.images, batch.prompts)
    return batch


def gather_batch(batch: Batch, accelerator, images: bool = False) -> Batch:
    """Every rank's rows of ``batch`` in rank order: prompts, total and reward components (and the images with
    ``images``), without conditioning or trajectory; ``batch`` itself in one process."""
    if accelerator is None or accelerator.num_processes == 1:
        return batch
    return Batch(gather_object(batch.prompts), None, batch.group_size,
                 images=accelerator.gather(batch.images) if images else None, total=accelerator.gather(batch.total),
                 rewards={name: accelerator.gather(v) for name, v in batch.rewards.items()})


def own_rows(values: torch.Tensor, accelerator) -> torch.Tensor:
    """This rank's rows of ``values`` computed on a ``gather_batch`` (the ranks' equal shares in rank order)."""
    if accelerator is None:
        return values
    return values.chunk(accelerator.num_processes)[accelerator.process_index]


def sample_with_advantages(ctx: Context, prompts: list[str], generator: torch.Generator,
                           advantage_fn: Callable[[Batch], torch.Tensor],
                           clip: float) -> tuple[Batch, torch.Tensor]:
    """Sample and score ``images_per_prompt`` images per prompt with the training rollouts' noise, and turn the
    rewards into advantages with ``advantage_fn``, clipped to ±``clip``. Under data parallelism ``advantage_fn``
    sees every rank's rewards (``gather_batch``), so batch-wide statistics cover the whole step and an
    algorithm's state (DDPO's per-prompt statistics) stays the same on every rank; each rank keeps its own rows."""
    batch = sample_and_score(ctx, expand_prompts(ctx, prompts), generator, rollout_stochasticity(ctx))
    advantages = own_rows(advantage_fn(gather_batch(batch, ctx.accelerator)), ctx.accelerator)
    return batch, advantages.clamp(-clip, clip)


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
