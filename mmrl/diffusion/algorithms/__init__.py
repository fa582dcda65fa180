"""Diffusion RL algorithms, registered by name in ``mmrl.plugins.DIFFUSION_ALGORITHMS``; each is a small class with
``step(ctx, prompts, generator)`` (``base.DiffusionAlgorithm``) and a config dataclass of its own, which
``algorithm_args`` fills.

* ``alignprop`` — reward backpropagation through the last K sampling steps (``alignprop.py``)
* ``ddpo`` — PPO over DDIM steps with per-prompt reward statistics (``ddpo.py``)
* ``flow_grpo`` — GRPO over flow-SDE steps with a KL to the reference (``flow_grpo.py``)
* ``awm`` — advantage-weighted flow matching on re-noised final samples (``awm.py``)

Every algorithm runs on both pipeline kinds (SD 1.x DDIM, SD3 flow matching). The registration declares whether
an algorithm needs a differentiable reward; an instance says whether it needs the reference denoiser
(``needs_reference``), and one with state to resume (DDPO's statistics) overrides ``state_dict`` /
``load_state_dict``. A plugin registers its own class the same way.
"""
from __future__ import annotations

from mmrl.diffusion.algorithms import alignprop, awm, ddpo, flow_grpo  # noqa: F401  (they register themselves)
from mmrl.diffusion.algorithms.base import DiffusionAlgorithm
from mmrl.errors import ConfigError
from mmrl.plugins import DIFFUSION_ALGORITHMS, IMAGE_REWARDS


def build_algorithm(cfg, differentiable_reward: bool) -> DiffusionAlgorithm:
    """The algorithm ``cfg.algorithm`` built with ``cfg.algorithm_args``, checked against its registered config
    dataclass (an unknown key names ``algorithm_args.<key>`` and the valid ones; an unknown algorithm lists the
    registered ones)."""
    args = DIFFUSION_ALGORITHMS.config(cfg.algorithm, cfg.algorithm_args, "algorithm_args")
    if DIFFUSION_ALGORITHMS.capability(cfg.algorithm, "differentiable_reward") and not differentiable_reward:
        differentiable = [name for name in IMAGE_REWARDS.names() if IMAGE_REWARDS.capability(name, "differentiable")]
        raise ConfigError(f"{cfg.algorithm} backpropagates through the reward: every reward in 'rewards' must be "
                          f"differentiable ({', '.join(differentiable)})")
    return DIFFUSION_ALGORITHMS.get(cfg.algorithm)(cfg, args)
