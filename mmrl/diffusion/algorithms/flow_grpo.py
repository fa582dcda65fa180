"""Flow-GRPO (Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL").

Per step: G images per prompt from the flow SDE (``flow_sde_step_with_logprob``, noise level a, fewer steps
than evaluation: 10 vs 40 in the paper), storing each step's log-prob; group advantages ``(r − mean_g)/std``
(optionally the batch's std) clipped to ±``ppo.adv_clip_max``; PPO-clip updates over the sampled steps with the
KL term ``β·mean((μθ − μref)²)/(2·std²)`` to the reference (adapter-disabled) denoiser; optional classifier-free
guidance (``sampling.guidance_scale``). On a DDIM pipeline the DDIM step with η takes the SDE's place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.diffusion.algorithms.base import Context, DiffusionAlgorithm, StepResult, group_advantage_fn
from mmrl.diffusion.algorithms.policy_gradient import policy_gradient_step
from mmrl.plugins import DIFFUSION_ALGORITHMS


@dataclass
class FlowGRPOConfig:
    beta: float = 0.0
    """KL coefficient to the reference model: β·mean((μθ − μref)²)/(2·std²) per step."""
    global_std: bool = False
    """Normalise advantages by the std of the whole batch instead of the group's."""


@DIFFUSION_ALGORITHMS.register("flow_grpo", config=FlowGRPOConfig)
class FlowGRPO(DiffusionAlgorithm):
    def __init__(self, cfg, args: FlowGRPOConfig):
        self.args = args
        self.needs_reference = args.beta > 0

    def step(self, ctx: Context, prompts: list[str], generator: torch.Generator) -> StepResult:
        return policy_gradient_step(ctx, prompts, generator, group_advantage_fn(self.args.global_std),
                                    beta=self.args.beta)
