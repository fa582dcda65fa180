"""DDPO (Black et al. 2023, "Training Diffusion Models with Reinforcement Learning").

Per step: sample images with stochastic DDIM (η = 1; on a flow-matching pipeline the flow SDE), storing every
step's log-prob; score them; advantages from per-prompt reward statistics (``PerPromptStatTracker``), clipped to
±``ppo.adv_clip_max``; then PPO-clip updates over the stored steps (``ppo_update``; clip 1e-4 in the paper).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.diffusion.algorithms.base import Batch, Context, DiffusionAlgorithm, StepResult
from mmrl.diffusion.algorithms.policy_gradient import policy_gradient_step
from mmrl.diffusion.losses import PerPromptStatTracker
from mmrl.plugins import DIFFUSION_ALGORITHMS


@dataclass
class DDPOConfig:
    stat_buffer: int = 32
    """Per-prompt reward statistics keep this many most recent rewards per prompt."""
    stat_min_count: int = 16
    """Below this many rewards for a prompt, the batch's statistics are used instead."""


@DIFFUSION_ALGORITHMS.register("ddpo", config=DDPOConfig)
class DDPO(DiffusionAlgorithm):
    def __init__(self, cfg, args: DDPOConfig):
        self.tracker = PerPromptStatTracker(args.stat_buffer, args.stat_min_count)

    def step(self, ctx: Context, prompts: list[str], generator: torch.Generator) -> StepResult:
        return policy_gradient_step(ctx, prompts, generator, self.advantages)

    def advantages(self, batch: Batch) -> torch.Tensor:
        return self.tracker.update(batch.prompts, batch.total)

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
