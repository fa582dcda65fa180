"""Flow-GRPO (Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL").

Per step: G images per prompt from the flow SDE (``flow_sde_step_with_logprob``, noise level a, fewer steps
than evaluation: 10 vs 40 in the paper), storing each step's log-prob; group advantages ``(r − mean_g)/std``
(optionally the batch's std) clipped to ±``ppo.adv_clip_max``; PPO-clip updates over the sampled steps with the
KL term ``β·mean((μθ − μref)²)/(2·std²)`` to the reference (adapter-disabled) denoiser; optional classifier-free
guidance (``sampling.guidance_scale``). On a DDIM pipeline the DDIM step with η takes the SDE's place.
"""
from __future__ import annotations

import torch

from mmrl.diffusion.algorithms.base import Batch, Context, StepResult
from mmrl.diffusion.algorithms.policy_gradient import policy_gradient_step
from mmrl.diffusion.losses import group_advantages


class FlowGRPO:
    differentiable_reward = False

    def __init__(self, cfg):
        self.cfg = cfg.flow_grpo
        self.needs_reference = self.cfg.beta > 0

    def step(self, ctx: Context, prompts: list[str], generator: torch.Generator) -> StepResult:
        return policy_gradient_step(ctx, prompts, generator, self.advantages, beta=self.cfg.beta)

    def advantages(self, batch: Batch) -> torch.Tensor:
        return group_advantages(batch.total, batch.group_size, self.cfg.global_std)
