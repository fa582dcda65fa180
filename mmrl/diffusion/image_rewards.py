"""The image rewards of ``rewards.image`` registered in ``mmrl.plugins.IMAGE_REWARDS``, GenEval's judgement as a
reward (``geneval``, ``geneval_partial``: ``GenEvalReward``), and their weighted sum.

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


class GenEvalReward:
    """GenEval's judgement of each image as a reward (not differentiable): the image goes to a GenEval detector
    (``GENEVAL_DETECTORS``, built at the first call) and its detections to ``mmrl.eval.geneval.judge`` with the
    prompt's metadata row.

    * ``geneval``: 1.0 when ``judge`` says correct, else 0.0;
    * ``geneval_partial``: ``(I_held + E_held·[I_held = I]) / (I + E)`` for a row of ``I`` include and ``E``
      exclude clauses, of which ``I_held`` and ``E_held`` hold under ``judge``'s rules: an include clause holds
      when its ``count`` objects are found with their colour and position (a position whose target clause
      failed fails too), an exclude clause when fewer than its ``count`` objects were kept. Exclude clauses
      earn credit only once every include clause holds, so an empty image scores 0 on every tag (clauses are
      judged by ``mmrl.eval.geneval.clause_reasons``). E.g. "two squares" (include 2, exclude 3) scores 1 with 2
      squares, 0.5 with 3 and 0 with 1; "a red circle and a blue square" with the circle right and the square
      green scores 0.5; it equals ``geneval`` on one-clause rows. A row without clauses scores as ``geneval``.

    The metadata row of a prompt is its row in ``metadata_file`` (JSON lines in GenEval's format, e.g. the
    diffusion run's ``prompts.file``; matched by prompt text, as GenEval's prompts are distinct), else the row
    the mini-GenEval world's wording states (``tasks.mini_geneval.parse_prompt``). A prompt with neither is a
    configuration error (``RewardArgumentError``). Pixels are untrusted model output: they are sanitised and
    quantised to 8 bits, so any image gets a score (a blank or garbage one 0).
    """

    differentiable = False

    def __init__(self, name: str, partial: bool, detector: str, detector_args: dict[str, Any] | None,
                 metadata_file: str | None):
        from mmrl.plugins import GENEVAL_DETECTORS

        self.name, self.partial = name, partial
        self.build_detector = GENEVAL_DETECTORS.bind(detector, detector_args, key=f"{name}.args.detector_args")
        self.detector = None
        self.metadata = {} if metadata_file is None else _metadata_by_prompt(metadata_file)

    loaded = property(lambda self: self.detector is not None, doc="Whether the detector is built.")

    def row(self, prompt: str) -> dict[str, Any]:
        """The metadata row of ``prompt`` (class docstring)."""
        if prompt in self.metadata:
            return self.metadata[prompt]
        from tasks.mini_geneval import parse_prompt

        row = parse_prompt(prompt)
        if row is None:
            raise image.RewardArgumentError(f"{self.name}: no GenEval metadata for the prompt {prompt!r} (give "
                                            "metadata_file, a JSON-lines file of GenEval metadata rows)")
        return row

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from PIL import Image

        from mmrl.eval.geneval import check_detections, judge

        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: got {images.shape[0]} images but {len(prompts)} prompts")
        rows = [self.row(p) for p in prompts]
        with torch.no_grad():
            pixels = (image.sanitize(images) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if self.detector is None:
            self.detector = self.build_detector()
        found = self.detector.detect([Image.fromarray(p, "RGB") for p in pixels], rows)
        scores = []
        for i, (row, raw) in enumerate(zip(rows, found)):
            detections = check_detections(raw, f"{self.name}: detections of image {i}")
            scores.append(_partial(row, detections) if self.partial else float(judge(row, detections)[0]))
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


def _partial(row: dict[str, Any], detections: list[dict[str, Any]]) -> float:
    """``geneval_partial``'s score of one image (``GenEvalReward``) from ``clause_reasons``."""
    from mmrl.eval.geneval import clause_reasons

    include, exclude = clause_reasons(row, detections)
    if not include + exclude:
        return 1.0  # nothing asked: judge calls it correct
    include_held = sum(not r for r in include)
    exclude_held = sum(not r for r in exclude) if include_held == len(include) else 0
    return (include_held + exclude_held) / (len(include) + len(exclude))


def _metadata_by_prompt(path: str) -> dict[str, dict[str, Any]]:
    """``{prompt: row}`` of a JSON-lines file of GenEval metadata rows, each checked; ``DataError`` naming the file
    and line for a bad row or a prompt given two different rows."""
    from mmrl.diffusion.prompts import read_prompt_file
    from mmrl.errors import DataError
    from mmrl.eval.geneval import check_metadata

    rows: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(read_prompt_file(path), 1):
        check_metadata(row, f"{path}: row {i}")
        if rows.setdefault(row["prompt"], row) != row:
            raise DataError(f"{path}: row {i}: the prompt {row['prompt']!r} has two different metadata rows")
    return rows


def geneval(*, detector: str = "shapes", detector_args: dict[str, Any] | None = None,
            metadata_file: str | None = None) -> GenEvalReward:
    """1.0 per image GenEval judges correct, else 0.0 (``GenEvalReward``)."""
    return GenEvalReward("geneval", False, detector, detector_args, metadata_file)


def geneval_partial(*, detector: str = "shapes", detector_args: dict[str, Any] | None = None,
                    metadata_file: str | None = None) -> GenEvalReward:
    """The fraction of the prompt's GenEval clauses each image satisfies (``GenEvalReward``)."""
    return GenEvalReward("geneval_partial", True, detector, detector_args, metadata_file)


IMAGE_REWARDS.register("geneval", geneval, differentiable=False)
IMAGE_REWARDS.register("geneval_partial", geneval_partial, differentiable=False)


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
