"""GRPO-family building blocks, each a small pure function registered by name, and ``build_algorithm``, which
turns a ``GRPOConfig`` into the bound functions the trainer calls (validating every name and hyperparameter
before any work starts)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mmrl.algorithms import advantages, aggregation, kl, losses, sampling, token_weights  # noqa: F401  (registers)
from mmrl.config import GRPOConfig
from mmrl.errors import ConfigError
from mmrl.plugins import (
    ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, PROMPT_SAMPLERS, ROLLOUTS, TOKEN_WEIGHTS,
)

__all__ = ["ADVANTAGES", "AGGREGATIONS", "KL_ESTIMATORS", "POLICY_LOSSES", "PROMPT_SAMPLERS", "ROLLOUTS",
           "TOKEN_WEIGHTS", "Algorithm", "build_algorithm"]

CHOICES = {"kl_in": ("loss", "reward"), "kl_importance_ratio": kl.IMPORTANCE_LEVELS,
           "reward_combine": advantages.COMBINE_MODES,
           "dynamic_sampling": ("off", "drop", "refill"), "shared_prefix": ("auto", "shared", "full")}


@dataclass
class Algorithm:
    """The configured variant: each field a registry function with its hyperparameters bound."""

    advantage: Callable
    policy_loss: Callable
    kl: Callable
    aggregate: Callable
    token_weights: list[Callable]
    prompt_sampler: Callable
    rollout: Callable
    needs_reference: bool
    """The policy loss reads reference log-probs (e.g. APO), so they are computed even when beta = 0."""
    needs_entropy: bool
    """A token weighting reads per-token entropies."""
    needs_distributions: bool
    """A token weighting reads the full next-token distributions."""

    def token_weight(self, batch: token_weights.TokenBatch) -> torch.Tensor | float:
        """Product of the active token weights (1 when none)."""
        weight = 1.0
        for fn in self.token_weights:
            weight = weight * fn(batch)
        return weight


def build_algorithm(g: GRPOConfig) -> Algorithm:
    for key, valid in CHOICES.items():
        if getattr(g, key) not in valid:
            raise ConfigError(f"config key 'grpo.{key}': {getattr(g, key)!r} is not one of {', '.join(valid)}")
    if g.group_size < 2:
        raise ConfigError("config key 'grpo.group_size' must be >= 2: group-relative advantages compare completions "
                          "of the same prompt")
    if g.rollout == "reinforce_ada" and g.kl_in == "reward" and g.beta > 0:
        raise ConfigError("grpo.rollout=reinforce_ada cannot be combined with grpo.kl_in=reward: the KL would be "
                          "needed for completions that never enter the loss; use kl_in: loss")
    if (g.advantage == "remax") != (g.rollout == "remax"):
        raise ConfigError("grpo.advantage=remax and grpo.rollout=remax go together: the rollout adds the greedy "
                          "completion whose reward is the estimator's baseline")
    if g.rollout == "remax" and g.kl_in == "reward" and g.beta > 0:
        raise ConfigError("grpo.rollout=remax cannot be combined with grpo.kl_in=reward: the KL would be needed for "
                          "the greedy completions, which never enter the loss; use kl_in: loss")
    level = g.loss_args.get("level", "token")
    if level not in losses.LEVELS:
        raise ConfigError(f"config key 'grpo.loss_args.level': {level!r} is not one of {', '.join(losses.LEVELS)}")
    whole = [n for n in g.token_weights if TOKEN_WEIGHTS.capability(n, "needs_whole_groups")]
    if whole and g.micro_batch_size % g.group_size:
        raise ConfigError(f"grpo.token_weights.{whole[0]} compares the completions of a group, so "
                          f"grpo.micro_batch_size ({g.micro_batch_size}) must be a multiple of grpo.group_size "
                          f"({g.group_size})")
    weights = [TOKEN_WEIGHTS.bind(name, args, f"grpo.token_weights.{name}") for name, args in g.token_weights.items()]
    return Algorithm(
        advantage=ADVANTAGES.bind(g.advantage, g.advantage_args, "grpo.advantage_args"),
        policy_loss=POLICY_LOSSES.bind(g.policy_loss, g.loss_args, "grpo.loss_args"),
        kl=KL_ESTIMATORS.bind(g.kl_estimator),
        aggregate=AGGREGATIONS.bind(g.loss_agg),
        token_weights=weights,
        prompt_sampler=PROMPT_SAMPLERS.bind(g.prompt_sampler, g.prompt_sampler_args, "grpo.prompt_sampler_args"),
        rollout=ROLLOUTS.bind(g.rollout, g.rollout_args, "grpo.rollout_args"),
        needs_reference=POLICY_LOSSES.capability(g.policy_loss, "needs_reference"),
        needs_entropy=any(TOKEN_WEIGHTS.capability(n, "needs_entropy") for n in g.token_weights),
        needs_distributions=bool(whole),
    )
