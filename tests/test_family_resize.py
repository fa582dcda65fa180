"""Images reach the processor already at the size the rewards' coordinate map assumes: ``MediaCache`` resizes each
image once (``smart_resize`` with the family's factor, patch size x 2x2 merge: 32 = 16 x 2 for Qwen3-VL, 28 = 14 x 2
for Qwen2.5-VL) and the processor, seeing sides that are multiples of its factor, does not resize again. So the
processor's ``image_grid_thw`` (in patches) times the patch size is the MediaCache image's size, which is the size
``coord_scale("resized", ...)`` maps answers back from: ``seen = original / scale``."""
from __future__ import annotations

import pytest
from PIL import Image

from mmrl.config import ModelConfig
from mmrl.data import MediaCache
from mmrl.eval.screenspot import coord_scale
from mmrl.models.load import load_processor
from mmrl.models.tiny import make_tiny
from mmrl.plugins import MODEL_FAMILIES
from mmrl.rollout.hf import encode_prompts
from mmrl.types import Sample

FAMILIES = {"qwen3_vl": (32, 16), "qwen2_5_vl": (28, 14)}
"""Family: (resize factor, patch side in pixels)."""

SIZES = [(50, 70), (100, 75), (300, 170), (900, 700)]
"""Original ``(W, H)``: no side a multiple of 28 or 32; the last is larger than the tiny processors' own maximum
(200,704 or 262,144 pixels), which a second resize would apply."""


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def processor(tmp_path_factory, family):
    path = make_tiny(tmp_path_factory.mktemp(family) / "ckpt", family=family)
    return load_processor(str(path), ModelConfig(path=str(path)))


@pytest.mark.parametrize("tokens", [(4, 16), (1, 2), (400, 1600)], ids=["inside", "below", "above"])
def test_processor_sees_the_mediacache_image_which_coord_scale_assumes(tmp_path, processor, family, tokens):
    """Also with budgets outside the processor's own (a 1-2 token budget below the tiny processor's minimum, a
    400-1600 token one above its maximum): the processor gets ``do_resize=False`` and keeps the size."""
    factor, patch = FAMILIES[family]
    assert MODEL_FAMILIES.capability(family, "factor") == factor
    min_pixels, max_pixels = (factor * factor * n for n in tokens)
    media = MediaCache(min_pixels, max_pixels, family=family)
    samples = []
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
        samples.append(Sample(id=str(i), prompt="<image>click the button", images=[str(tmp_path / f"{i}.png")]))
    images = [media.images(s) for s in samples]
    batch = encode_prompts(processor, samples, images, family=family)

    for (w, h), [image], (t, grid_h, grid_w) in zip(SIZES, images, batch["image_grid_thw"].tolist()):
        seen_w, seen_h = image.size
        assert seen_w % factor == 0 and seen_h % factor == 0
        assert (t, grid_w * patch, grid_h * patch) == (1, seen_w, seen_h)
        sx, sy = coord_scale("resized", (w, h), min_pixels, max_pixels, factor=factor)
        assert (round(w / sx), round(h / sy)) == (seen_w, seen_h)
