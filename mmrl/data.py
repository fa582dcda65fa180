"""Deterministic batching and image preparation shared by SFT, RL and evaluation."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PIL import Image

from mmrl.types import Sample
from mmrl.vision import fit_image, load_image


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


class ImageCache:
    """Loads and resizes sample images to the model's pixel budget once; keeps the ``max_items`` most recent."""

    def __init__(self, min_pixels: int, max_pixels: int, max_items: int = 4096):
        self.min_pixels, self.max_pixels, self.max_items = min_pixels, max_pixels, max_items
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()

    def _fit(self, path: str) -> Image.Image:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        image, _ = fit_image(load_image(path), self.min_pixels, self.max_pixels)
        self._cache[path] = image
        if len(self._cache) > self.max_items:
            self._cache.popitem(last=False)
        return image

    def images(self, sample: Sample) -> list[Image.Image]:
        """The sample's images as the model sees them."""
        return [self._fit(p) for p in sample.images]
