"""The image rewards of ``rewards.image`` registered in ``mmrl.plugins.IMAGE_REWARDS``, and their weighted sum.

A reward is a factory whose keyword-only parameters are its arguments (``rewards[i].args`` in the config, checked
by type with ``Registry.bind``); it builds ``reward(images [B, 3, H, W] in [0, 1], prompts) -> [B]``. The
registration declares whether gradients flow from the reward to the images (``differentiable``), which AlignProp
needs. A plugin registers its own the same way.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mmrl.errors import ConfigError
from mmrl.plugins import IMAGE_REWARDS
from rewards import image

IMAGE_REWARDS.register("jpeg_compressibility", image.jpeg_compressibility,
                       differentiable=image.JpegReward.differentiable)
IMAGE_REWARDS.register("jpeg_incompressibility", image.jpeg_incompressibility,
                       differentiable=image.JpegReward.differentiable)
for _reward in (image.ColorTarget, image.Brightness, image.ClipScore, image.Aesthetic, image.PickScore):
    IMAGE_REWARDS.register(_reward.name, _reward, differentiable=_reward.differentiable)


def make_image_reward(name: str, **args: Any) -> image.ImageReward:
    """The reward ``name`` built with ``args``. ``ConfigError`` names an unknown reward (listing the registered
    ones), an unknown argument (listing the valid ones), a value of the wrong type, and a value the reward itself
    rejects (its ``ValueError``)."""
    factory = IMAGE_REWARDS.bind(name, args, key=f"{name}.args")
    try:
        return factory()
    except ValueError as e:
        raise ConfigError(f"image reward {name!r}: {e}") from None


class WeightedImageReward:
    """``total = Σ_i weight_i·reward_i(images, prompts)`` over ``(name, weight[, args])`` items.

    ``__call__`` returns ``(total, components)``: ``components`` maps each reward's name to its ``[B]``
    tensor (as computed: a differentiable one keeps its graph; detach it to log); a name used twice gets
    ``_2``, ``_3``... ``differentiable`` is True only when every component's registration declares it. A reward
    whose weights turn out missing or unfit when they load (at the first call) raises ``ConfigError`` naming it.
    """

    def __init__(self, items: Sequence[tuple]):
        if not items:
            raise ConfigError("WeightedImageReward needs at least one (name, weight, args) item")
        self.rewards: dict[str, image.ImageReward] = {}
        self.weights: dict[str, float] = {}
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ConfigError(f"weighted image reward item {item!r}: expected (name, weight, args)")
            name, weight, args = item[0], item[1], (item[2] if len(item) == 3 else None) or {}
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ConfigError(f"image reward {name!r}: weight {weight!r} must be a finite number")
            key, n = name, 1
            while key in self.rewards:
                n += 1
                key = f"{name}_{n}"
            self.rewards[key], self.weights[key] = make_image_reward(name, **args), float(weight)
        self.name = "+".join(f"{w:g}*{k}" for k, w in self.weights.items())
        self.differentiable = all(IMAGE_REWARDS.capability(item[0], "differentiable") for item in items)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        components = {}
        for key, reward in self.rewards.items():
            try:
                components[key] = reward(images, prompts)
            except image.RewardArgumentError as e:
                raise ConfigError(f"image reward {key!r}: {e}") from e
        total = sum(self.weights[key] * value for key, value in components.items())
        return total, components
