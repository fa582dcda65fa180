"""The named colours of mmrl's synthetic data: GUI screenshots (``tasks.synthetic_gui``), videos
(``tasks.synthetic_video``) and the tiny diffusion pre-training images (``mmrl.diffusion.pretrain``).

One table of values; each generator draws from the names it lists (the tasks need saturated colours only, the
pre-training also white and black). A leaf module, so the tasks and the diffusion branch share it without
importing each other.
"""
from __future__ import annotations

from collections.abc import Iterable

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "blue": (0.10, 0.20, 0.90),
    "green": (0.10, 0.75, 0.20),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "orange": (0.96, 0.51, 0.08),
    "purple": (0.62, 0.30, 0.84),
    "pink": (0.93, 0.28, 0.60),
    "cyan": (0.16, 0.84, 0.88),
}
"""RGB in [0, 1]. The saturated ones are at least 100 apart in 8-bit L1 distance and far from grey (max − min of
their 8-bit channels ≥ 100), so they stand out from the grey and dark backgrounds and a colour word names one."""


def rgb8(names: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """``{name: (R, G, B)}`` of ``names`` in 8 bits (``round(255·c)``), in their order."""
    return {name: tuple(round(255 * c) for c in COLOURS[name]) for name in names}
