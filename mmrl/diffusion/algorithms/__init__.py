"""Diffusion RL algorithms, registered by name; each is a small class with ``step(ctx, prompts, generator)``.

* ``alignprop`` — reward backpropagation through the last K sampling steps (``alignprop.py``)
* ``ddpo`` — PPO over DDIM steps with per-prompt reward statistics (``ddpo.py``)
* ``flow_grpo`` — GRPO over flow-SDE steps with a KL to the reference (``flow_grpo.py``)
* ``awm`` — advantage-weighted flow matching on re-noised final samples (``awm.py``)

Every algorithm runs on both pipeline kinds (SD 1.x DDIM, SD3 flow matching). Each class states whether it needs a
differentiable reward and whether it needs the reference denoiser; one with state to resume (DDPO's statistics) has ``state_dict`` /
``load_state_dict``.
"""
from __future__ import annotations

from mmrl.diffusion.algorithms.alignprop import AlignProp
from mmrl.diffusion.algorithms.awm import AWM
from mmrl.diffusion.algorithms.ddpo import DDPO
from mmrl.diffusion.algorithms.flow_grpo import FlowGRPO
from mmrl.errors import ConfigError

ALGORITHMS = {"alignprop": AlignProp, "ddpo": DDPO, "flow_grpo": FlowGRPO, "awm": AWM}


def build_algorithm(cfg, differentiable_reward: bool):
    """The algorithm ``cfg.algorithm``; an unknown name lists the valid ones."""
    if cfg.algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {cfg.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    cls = ALGORITHMS[cfg.algorithm]
    if cls.differentiable_reward and not differentiable_reward:
        raise ConfigError(f"{cfg.algorithm} backpropagates through the reward: every reward in 'rewards' must be "
                          "differentiable (e.g. color_target, brightness, clip_score, aesthetic, pickscore)")
    return cls(cfg)
