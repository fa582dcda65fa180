"""Seeded synthetic detection data in the real formats: COCO instances JSON + PNG images, and REC JSON lines.

Each image is a light, faintly noisy background with 0 to ``max_objects`` filled shapes (circle, square, triangle;
the COCO categories) in named colours (``mmrl.colours``). Objects may overlap up to ``max_overlap`` IoU (later ones
are drawn on top); a share ``empty_fraction`` of the images has no object at all. Every image is a pure function
of ``(seed, index)`` and the settings, so a split regenerates bit for bit.

REC rows name one object per row, with the expressions people use for such scenes: ``"the red circle"`` when no
other object has that colour and shape, ``"the left square"`` / ``"the right square"`` when exactly two objects
have that shape. Boxes are the shapes' pixel extents: COCO ``bbox`` ``[x, y, w, h]`` covers columns ``x .. x+w-1``,
and the REC ``bbox`` is the same box as ``[x, y, x+w, y+h]``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmrl.colours import rgb8
from mmrl.errors import ConfigError
from rewards.gui import box_iou

SHAPES = ("circle", "square", "triangle")
COLOURS = rgb8(("red", "green", "blue", "yellow", "purple", "orange"))
SHAPE_COLOURS = {"circle": "red", "square": "blue", "triangle": "green"}
"""The colour of each category with ``colour_per_shape``."""
BACKGROUNDS = ((246, 246, 246), (236, 238, 240), (250, 248, 244))
MAX_TRIES = 200
"""Rejection-sampling attempts per object before the image keeps fewer objects."""


@dataclass(frozen=True)
class Shape:
    """One drawn object: category (shape), colour name and pixel box ``(x, y, w, h)``."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]

    @property
    def corners(self) -> list[float]:
        x, y, w, h = self.box
        return [float(x), float(y), float(x + w), float(y + h)]


def check_settings(width: int, height: int, min_objects: int, max_objects: int, min_size: int, max_size: int,
                   empty_fraction: float, max_overlap: float, shapes: tuple[str, ...]) -> None:
    """``ConfigError`` naming the first bad setting."""
    unknown = [s for s in shapes if s not in SHAPES]
    if not shapes or unknown:
        raise ConfigError(f"shapes: unknown or empty {list(shapes)}; valid: {list(SHAPES)}")
    if not 0 <= min_objects <= max_objects:
        raise ConfigError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not 4 <= min_size <= max_size <= min(width, height):
        raise ConfigError(f"need 4 <= min_size <= max_size <= the image's shorter side, got {min_size}, {max_size} "
                          f"for {width}x{height}")
    if not 0 <= empty_fraction <= 1 or not 0 <= max_overlap < 1:
        raise ConfigError(f"need empty_fraction in [0, 1] and max_overlap in [0, 1), got {empty_fraction}, "
                          f"{max_overlap}")


def _draw(draw: ImageDraw.ImageDraw, obj: Shape) -> None:
    x, y, w, h = obj.box
    corners, fill = (x, y, x + w - 1, y + h - 1), COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse(corners, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(corners, fill=fill)
    else:
        draw.polygon([(x + (w - 1) / 2, y), (x, y + h - 1), (x + w - 1, y + h - 1)], fill=fill)


def make_image(seed: int, index: int, *, width: int, height: int, min_objects: int, max_objects: int,
               min_size: int, max_size: int, empty_fraction: float, max_overlap: float,
               shapes: tuple[str, ...] = SHAPES, colour_per_shape: bool = False) -> tuple[Image.Image, list[Shape]]:
    """Image ``index`` of the stream for ``seed`` and its objects, in drawing order. ``colour_per_shape``: each
    category in its one colour (``SHAPE_COLOURS``), else colours drawn at random."""
    rng = np.random.default_rng([seed, index])
    base = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], dtype=np.int16)
    pixels = base + rng.integers(-4, 5, size=(height, width, 1), dtype=np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    empty = rng.random() < empty_fraction
    count = 0 if empty else int(rng.integers(max(min_objects, 1) if max_objects else 0, max_objects + 1))
    objects: list[Shape] = []
    for _ in range(count):
        for _ in range(MAX_TRIES):
            w = int(rng.integers(min_size, max_size + 1))
            shape = shapes[int(rng.integers(len(shapes)))]
            h = w if shape != "triangle" else int(rng.integers(min_size, max_size + 1))
            box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            candidate = Shape(shape, SHAPE_COLOURS[shape] if colour_per_shape else colour, box)
            if all(box_iou(candidate.corners, o.corners) <= max_overlap for o in objects):
                objects.append(candidate)
                break
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj)
    return image, objects


def expressions(objects: list[Shape]) -> list[tuple[str, Shape]]:
    """The unambiguous referring expressions of an image's objects (see the module docstring)."""
    out = []
    for obj in objects:
        if sum(o.shape == obj.shape and o.colour == obj.colour for o in objects) == 1:
            out.append((f"the {obj.colour} {obj.shape}", obj))
    for shape in SHAPES:
        same = sorted((o for o in objects if o.shape == shape), key=lambda o: o.box[0] + o.box[2] / 2)
        if len(same) == 2 and same[0].box[0] + same[0].box[2] / 2 < same[1].box[0] + same[1].box[2] / 2:
            out += [(f"the left {shape}", same[0]), (f"the right {shape}", same[1])]
    return out


def generate(out_dir: str | Path, n: int, *, seed: int, split_name: str = "synthetic", width: int = 64,
             height: int = 64, min_objects: int = 0, max_objects: int = 4, min_size: int = 10, max_size: int = 28,
             empty_fraction: float = 0.1, max_overlap: float = 0.3, shapes: tuple[str, ...] = SHAPES,
             colour_per_shape: bool = False) -> Path:
    """Write ``n`` images to ``out_dir/images/<split>_00000.png ...``, their COCO instances file
    ``out_dir/instances_<split>.json`` and the REC rows ``out_dir/rec_<split>.jsonl``; returns the COCO file's
    path. ``ConfigError`` for bad settings."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split_name):
        raise ConfigError(f"split_name must match [A-Za-z0-9_-]+, got {split_name!r}")
    check_settings(width, height, min_objects, max_objects, min_size, max_size, empty_fraction, max_overlap,
                   tuple(shapes))
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    category_ids = {name: i + 1 for i, name in enumerate(SHAPES)}
    images, annotations, rec_rows = [], [], []
    for index in range(n):
        image, objects = make_image(seed, index, width=width, height=height, min_objects=min_objects,
                                    max_objects=max_objects, min_size=min_size, max_size=max_size,
                                    empty_fraction=empty_fraction, max_overlap=max_overlap, shapes=tuple(shapes),
                                    colour_per_shape=colour_per_shape)
        name = f"{split_name}_{index:05d}.png"
        image.save(out_dir / "images" / name)
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for obj in objects:
            x, y, w, h = obj.box
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": category_ids[obj.shape], "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": 0})
        rec_rows += [{"image": f"images/{name}", "expression": text, "bbox": obj.corners}
                     for text, obj in expressions(objects)]
    categories = [{"id": i, "name": name, "supercategory": "shape"} for name, i in category_ids.items()]
    path = out_dir / f"instances_{split_name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}) + "\n",
                    encoding="utf-8")
    (out_dir / f"rec_{split_name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rec_rows),
                                                    encoding="utf-8")
    return path
