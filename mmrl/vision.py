"""Images -> what a Qwen2-VL / Qwen2.5-VL processor sees: pixel budgets, loading and coordinate maps.

Qwen2-VL and Qwen2.5-VL cut an image into 14x14 patches and merge 2x2 of them into one visual token, so the
image they see has both sides a multiple of 28 and an area inside a pixel budget (``min_pixels``,
``max_pixels``). ``smart_resize`` computes that size, ``fit_image`` applies it and returns the scale that maps
coordinates the model writes (pixels of the image it saw) back to the original image.
"""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from mmrl.errors import DataError

MAX_ASPECT_RATIO = 200
"""Qwen2-VL rejects images whose longer side is more than this many times the shorter one."""

_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What Pillow raises on a corrupt, truncated or non-image file (``UnidentifiedImageError`` is an OSError)."""


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Return ``(h, w)``: the size Qwen2-VL/2.5-VL resizes a ``height`` x ``width`` image to.

    The rule (Qwen2-VL's image processor and ``qwen_vl_utils.smart_resize``):

    1. round each side to the nearest multiple of ``factor`` (Python's ``round``, so halves go to the even
       multiple: 42 -> 56, 70 -> 56), at least ``factor``;
    2. if the area exceeds ``max_pixels``, scale both original sides by ``beta = sqrt(h*w / max_pixels)``
       and round each *down* to a multiple of ``factor``;
    3. else if the area is below ``min_pixels``, scale both original sides by ``beta = sqrt(min_pixels /
       (h*w))`` and round each *up* to a multiple of ``factor``.

    The defaults are the Qwen2.5-VL processor's (``min_pixels`` 3136, ``max_pixels`` 1003520); note that
    ``qwen_vl_utils`` has different defaults, so pass the budget explicitly when comparing.

    Departure: in step 2 a side is never rounded below ``factor`` (as in transformers' processor);
    ``qwen_vl_utils`` would return 0 there, which only happens for very thin images under a small budget.

    Raises ``ValueError`` if a side is not positive or the aspect ratio exceeds ``MAX_ASPECT_RATIO``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image sides must be positive, got height={height}, width={width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got {ratio:.1f} ({width}x{height})")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert to RGB; transparent pixels become white (as ``qwen_vl_utils`` does for RGBA)."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` and decode it fully into an RGB image.

    Decoding happens here (``img.load()``), so a truncated file fails now and not inside a training step.
    EXIF orientation is not applied: benchmark boxes refer to the stored pixel grid.

    Raises ``DataError`` with a one-line message naming the file: ``image not found: PATH`` or
    ``cannot read image PATH: REASON``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except _READ_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read image {path}: {reason}") from exc


def fit_image(
    img: Image.Image, min_pixels: int, max_pixels: int, factor: int = 28
) -> tuple[Image.Image, tuple[float, float]]:
    """Resize ``img`` (bicubic) to ``smart_resize``'s size and return ``(resized, (sx, sy))``.

    ``sx = orig_w / new_w`` and ``sy = orig_h / new_h``: a point ``(x, y)`` the model gives in pixels of the
    image it saw is ``(x * sx, y * sy)`` in the original image.
    """
    orig_w, orig_h = img.size
    new_h, new_w = smart_resize(orig_h, orig_w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    resized = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    return resized, (orig_w / new_w, orig_h / new_h)
