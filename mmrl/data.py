"""Deterministic batching and image/video preparation shared by SFT, RL and evaluation."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable

import numpy as np
from PIL import Image

from mmrl.config import ModelConfig
from mmrl.plugins import MODEL_FAMILIES
from mmrl.rollout.hf import encode_prompts
from mmrl.types import LoadContext, Sample
from mmrl.vision import VideoBudget, VideoClip, fit_image, load_image, load_video


def indices_at(n: int, position: int, count: int, seed: int) -> list[int]:
    """``count`` dataset indices starting at ``position`` of an endless stream of seeded per-epoch permutations.

    Depends only on its arguments, so a resumed run that restores ``position`` draws exactly what an
    uninterrupted one would.
    """
    out, pos = [], position
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(count - len(out), n - offset)
        out.extend(int(i) for i in order[offset : offset + take])
        pos += take
    return out


def indices_for_step(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Dataset indices for ``step`` when every step draws ``per_step``: ``indices_at(n, step * per_step, ...)``."""
    return indices_at(n, step * per_step, per_step, seed)


class MediaCache:
    """Loads sample images (resized to the model's pixel budget) and videos (frames sampled and resized under
    ``video``'s budget) once; keeps the ``max_items`` most recently used of each."""

    def __init__(self, min_pixels: int, max_pixels: int, video: VideoBudget | None = None, max_items: int = 4096, *,
                 family: str):
        self.min_pixels, self.max_pixels, self.video, self.max_items = min_pixels, max_pixels, video, max_items
        self.family = family
        """The model family's adapter name (``mmrl.models.families``): resize factor, prompt encoding."""
        self.factor = MODEL_FAMILIES.capability(family, "factor")
        if video is not None:
            self.video = replace(video, factor=self.factor)
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._videos: OrderedDict[str, VideoClip] = OrderedDict()

    def _get(self, cache: OrderedDict, key: str, load: Callable[[str], Any]) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        cache[key] = value = load(key)
        if len(cache) > self.max_items:
            cache.popitem(last=False)
        return value

    def images(self, sample: Sample) -> list[Image.Image]:
        """The sample's images as the model sees them."""
        fit = lambda path: fit_image(load_image(path), self.min_pixels, self.max_pixels, self.factor)[0]  # noqa: E731
        return [self._get(self._images, p, fit) for p in sample.images]

    def videos(self, sample: Sample) -> list[VideoClip]:
        """The sample's videos as the model sees them (sampled frames and their timestamps)."""
        if sample.videos and self.video is None:
            raise ValueError(f"sample {sample.id} has videos but no video budget was given")
        return [self._get(self._videos, p, lambda path: load_video(path, self.video)) for p in sample.videos]

    def inputs(self, samples: list[Sample]) -> tuple[list[list[Image.Image]], list[list[VideoClip]]]:
        """``(images, videos)`` per sample, as the model sees them."""
        return [self.images(s) for s in samples], [self.videos(s) for s in samples]

    def encode(self, processor, samples: list[Sample]):
        """The processor's batch of ``samples``' prompts with their media (``rollout.hf.encode_prompts``)."""
        return encode_prompts(processor, samples, *self.inputs(samples), family=self.family)


def load_context(model: ModelConfig, family: str) -> LoadContext:
    """What tasks need to build samples for ``model`` of ``family``: its image and video budgets, the family's
    resize factor and coordinate convention, and the cache folder."""
    factor = MODEL_FAMILIES.capability(family, "factor")
    return LoadContext(model.min_pixels, model.max_pixels, model.cache_dir, factor=factor,
                       coords=MODEL_FAMILIES.capability(family, "coords"), video=replace(model.video, factor=factor))


def media_cache(model: ModelConfig, family: str) -> MediaCache:
    """Images and videos prepared for ``model``'s budgets and ``family``'s resize factor."""
    return MediaCache(model.min_pixels, model.max_pixels, model.video, family=family)
