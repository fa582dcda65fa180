"""Seeded synthetic GUI screenshots in ScreenSpot v1 format, for CPU runs of the GUI-grounding task.

Each image is a light "screen" (optionally with faint noise and a title bar) holding one target element and
``n_distractors`` others. Element kinds:

* ``button``: a filled rounded rectangle in a named colour, optionally labelled with a word in white
  (``data_type`` "text" when labelled, else "icon");
* ``icon``: a square box holding a circle, triangle, star or square in a named colour (``data_type`` "icon");
* ``text``: a word in dark grey on the background (``data_type`` "text").

The instruction names the target's attributes: colour (buttons, icons), shape (icons) and word (labelled
buttons, text). No distractor shares any attribute the instruction names (no other element has the target's
colour, shape or word), and no two elements overlap, so the instruction is unambiguous and the target
colour appears nowhere else on the image. Every element lies fully inside the image.

Output layout (``generate``)::

    out_dir/screenspot_<split_name>.json      JSON array, ScreenSpot v1 fields, bbox [x, y, w, h] pixels
    out_dir/images/<split_name>_00000.png     img_filename is relative to out_dir/images/

Image ``i`` depends only on ``(seed, i)`` and the layout arguments, so the same seed gives byte-identical
files and a run with more images extends a run with fewer.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmrl.colours import rgb8
from mmrl.errors import ConfigError

COLOURS = rgb8(("red", "orange", "yellow", "green", "blue", "purple", "pink"))
"""Named element colours (``mmrl.colours``); none of them is grey, so background, bar, noise and text never match
them."""

SHAPES = ("circle", "triangle", "star", "square")
WORDS = ("save", "open", "close", "search", "home", "menu", "back", "next", "login", "share", "print", "edit")
KINDS = ("button", "icon", "text")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "button": ("click the {colour} button", "the {colour} button", "press the {colour} button"),
    "labelled": (
        "click the {colour} button labelled '{word}'",
        "press the {colour} '{word}' button",
        "the {colour} button that says '{word}'",
    ),
    "icon": ("click the {colour} {shape} icon", "the {colour} {shape} icon", "tap the {colour} {shape}"),
    "text": ("click the word '{word}'", "the text '{word}'", "tap on '{word}'"),
}
"""Instruction templates by target kind ("labelled" is a button with a word on it)."""

TEXT_COLOUR = (40, 40, 40)
LABEL_COLOUR = (255, 255, 255)
BACKGROUNDS = ((246, 246, 246), (250, 250, 252), (238, 240, 243), (255, 255, 255))
BAR_COLOURS = ((205, 205, 210), (220, 222, 226), (190, 192, 198))
TEXT_PAD = 2  # pixels between a text element's ink and its box
GAP = 2  # minimum free pixels between two elements
MIN_FONT, MAX_FONT = 8, 16
MAX_TRIES = 200  # rejection-sampling attempts per element


@dataclass(frozen=True)
class Element:
    """One drawn element: ``box`` is ``(x, y, w, h)`` in pixels; unused attributes are ``None``."""

    kind: str
    box: tuple[int, int, int, int]
    colour: str | None = None
    shape: str | None = None
    word: str | None = None
    font_size: int | None = None

    @property
    def data_type(self) -> str:
        """ScreenSpot's element type: "text" if a word is drawn, else "icon"."""
        return "text" if self.word is not None else "icon"

    def named(self) -> dict[str, str]:
        """The attributes an instruction about this element names (attribute name -> value)."""
        keys = {"button": ("colour", "word"), "icon": ("colour", "shape"), "text": ("word",)}[self.kind]
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class Example:
    """A rendered screenshot with its target, distractors and instruction."""

    image: Image.Image
    target: Element
    distractors: list[Element]
    instruction: str

    def record(self, img_filename: str) -> dict:
        """The ScreenSpot v1 record of this example."""
        return {
            "img_filename": img_filename,
            "bbox": list(self.target.box),
            "instruction": self.instruction,
            "data_type": self.target.data_type,
            "data_source": "synthetic",
        }


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=None)
def _ink_box(word: str, size: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of ``word``'s ink relative to the drawing origin."""
    return tuple(int(v) for v in _font(size).getbbox(word))


def _text_size(word: str, size: int) -> tuple[int, int]:
    """Width and height of ``word``'s ink at font ``size``."""
    left, top, right, bottom = _ink_box(word, size)
    return right - left, bottom - top


def _fit_font(word: str, max_w: int, max_h: int, largest: int = MAX_FONT) -> int | None:
    """The largest font size in ``[MIN_FONT, largest]`` whose ink fits ``max_w`` x ``max_h``, or None."""
    for size in range(largest, MIN_FONT - 1, -1):
        w, h = _text_size(word, size)
        if w <= max_w and h <= max_h:
            return size
    return None


def _sample_shape(rng: np.random.Generator, kind: str, min_size: int, max_size: int) -> Element:
    """An element of ``kind`` with random attributes and size, placed at the origin."""
    colour = str(rng.choice(list(COLOURS)))
    if kind == "icon":
        side = int(rng.integers(min_size, max_size + 1))
        return Element("icon", (0, 0, side, side), colour=colour, shape=str(rng.choice(SHAPES)))
    word = str(rng.choice(WORDS))
    if kind == "text":
        largest = int(rng.integers(MIN_FONT + 1, MAX_FONT + 1))
        size = _fit_font(word, max_size - 2 * TEXT_PAD, max_size - 2 * TEXT_PAD, largest) or MIN_FONT
        w, h = _text_size(word, size)
        return Element("text", (0, 0, w + 2 * TEXT_PAD, h + 2 * TEXT_PAD), word=word, font_size=size)
    w = int(rng.integers(min_size, max_size + 1))
    h = int(rng.integers(min_size, w + 1))
    size = _fit_font(word, w - 6, h - 4, largest=min(MAX_FONT, h)) if rng.random() < 0.5 else None
    return Element("button", (0, 0, w, h), colour=colour, word=word if size else None, font_size=size)


def _distinct(candidate: Element, target: Element) -> bool:
    """True if ``candidate`` shares none of the attributes the target's instruction names."""
    return all(getattr(candidate, k) != v for k, v in target.named().items())


def _separated(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """True if boxes ``a`` and ``b`` (x, y, w, h) are at least ``GAP`` pixels apart."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax + aw + GAP <= bx or bx + bw + GAP <= ax or ay + ah + GAP <= by or by + bh + GAP <= ay


def _place(
    rng: np.random.Generator, el: Element, area: tuple[int, int, int], taken: list[Element]
) -> Element | None:
    """``el`` moved to a random spot in ``area`` = (width, top, height) clear of ``taken``, or None."""
    width, top, height = area
    _, _, w, h = el.box
    if w > width or h > height - top:
        return None
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(top, height - h + 1))
    box = (x, y, w, h)
    if all(_separated(box, other.box) for other in taken):
        return replace(el, box=box)
    return None


def _sample_element(
    rng: np.random.Generator,
    kinds: tuple[str, ...],
    sizes: tuple[int, int],
    area: tuple[int, int, int],
    taken: list[Element],
    target: Element | None,
) -> Element:
    """A placed element clear of ``taken`` and, when ``target`` is given, distinct from it."""
    for _ in range(MAX_TRIES):
        el = _sample_shape(rng, str(rng.choice(kinds)), *sizes)
        if target is not None and not _distinct(el, target):
            continue
        placed = _place(rng, el, area, taken)
        if placed is not None:
            return placed
    width, _, height = area
    raise ConfigError(
        f"cannot place {len(taken) + 1} elements of size {sizes[0]}..{sizes[1]} px on a {width}x{height} "
        "image; lower n_distractors or max_size"
    )


def _star(box: tuple[int, int, int, int], points: int = 5) -> list[tuple[float, float]]:
    """Vertices of a ``points``-pointed star inscribed in ``box``, first point up."""
    x, y, w, h = box
    cx, cy, outer = x + (w - 1) / 2, y + (h - 1) / 2, (min(w, h) - 1) / 2
    verts = []
    for i in range(2 * points):
        r = outer if i % 2 == 0 else outer * 0.45
        angle = -math.pi / 2 + i * math.pi / points
        verts.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return verts


def _draw_word(draw: ImageDraw.ImageDraw, el: Element, fill: tuple[int, int, int]) -> None:
    """Draw ``el.word`` centred in ``el.box``."""
    x, y, w, h = el.box
    left, top, right, bottom = _ink_box(el.word, el.font_size)
    ox = x + (w - (right - left)) // 2 - left
    oy = y + (h - (bottom - top)) // 2 - top
    draw.text((ox, oy), el.word, font=_font(el.font_size), fill=fill)


def _draw_element(draw: ImageDraw.ImageDraw, el: Element) -> None:
    """Draw one element inside its box."""
    x, y, w, h = el.box
    corners = (x, y, x + w - 1, y + h - 1)
    if el.kind == "text":
        _draw_word(draw, el, TEXT_COLOUR)
        return
    fill = COLOURS[el.colour]
    if el.kind == "button":
        draw.rounded_rectangle(corners, radius=max(1, min(w, h) // 4), fill=fill)
        if el.word is not None:
            _draw_word(draw, el, LABEL_COLOUR)
    elif el.shape == "circle":
        draw.ellipse(corners, fill=fill)
    elif el.shape == "square":
        draw.rectangle(corners, fill=fill)
    elif el.shape == "triangle":
        draw.polygon([(x + (w - 1) / 2, y), (x, y + h - 1), (x + w - 1, y + h - 1)], fill=fill)
    else:
        draw.polygon(_star(el.box), fill=fill)


def _background(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, int]:
    """A light screen with optional faint grey noise and title bar; returns it and the bar's height."""
    base = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], dtype=np.int16)
    pixels = np.broadcast_to(base, (height, width, 3)).copy()
    if rng.random() < 0.5:
        pixels += rng.integers(-3, 4, size=(height, width, 1), dtype=np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    bar = max(6, height // 10) if rng.random() < 0.5 else 0
    if bar:
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, width - 1, bar - 1), fill=BAR_COLOURS[int(rng.integers(len(BAR_COLOURS)))])
        for i in range(3):
            cx = width - (i + 1) * bar
            draw.ellipse((cx, bar // 4, cx + bar // 2, bar // 4 + bar // 2), fill=(150, 150, 155))
    return image, bar


def _check_args(
    width: int, height: int, n_distractors: int, kinds: tuple[str, ...], min_size: int, max_size: int
) -> None:
    """Raise ``ConfigError`` naming the first bad argument."""
    bad_kinds = [k for k in kinds if k not in KINDS]
    if not kinds or bad_kinds:
        raise ConfigError(f"kinds: unknown or empty {list(kinds)}; valid kinds are {list(KINDS)}")
    if n_distractors < 0:
        raise ConfigError(f"n_distractors must be >= 0, got {n_distractors}")
    if not 8 <= min_size <= max_size:
        raise ConfigError(f"need 8 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if max_size > min(width, height) * 0.9:
        raise ConfigError(f"max_size={max_size} must be at most 90% of the image's shorter side ({width}x{height})")


def make_example(
    seed: int,
    index: int,
    *,
    width: int = 112,
    height: int = 112,
    n_distractors: int = 0,
    kinds: tuple[str, ...] = ("button",),
    min_size: int = 14,
    max_size: int = 40,
) -> Example:
    """Render example ``index`` of the stream for ``seed`` (a pure function of its arguments)."""
    _check_args(width, height, n_distractors, kinds, min_size, max_size)
    rng = np.random.default_rng([seed, index])
    image, bar = _background(rng, width, height)
    area, sizes = (width, bar, height), (min_size, max_size)
    target = _sample_element(rng, tuple(kinds), sizes, area, [], None)
    distractors: list[Element] = []
    for _ in range(n_distractors):
        distractors.append(_sample_element(rng, tuple(kinds), sizes, area, [target, *distractors], target))
    draw = ImageDraw.Draw(image)
    for el in (target, *distractors):
        _draw_element(draw, el)
    template_key = "labelled" if target.kind == "button" and target.word else target.kind
    templates = TEMPLATES[template_key]
    instruction = templates[int(rng.integers(len(templates)))].format(**target.named())
    return Example(image, target, distractors, instruction)


def generate(
    out_dir: str | Path,
    n: int,
    *,
    seed: int,
    width: int = 112,
    height: int = 112,
    n_distractors: int = 0,
    kinds: tuple[str, ...] = ("button",),
    min_size: int = 14,
    max_size: int = 40,
    split_name: str = "synthetic",
) -> Path:
    """Write ``n`` examples under ``out_dir`` in ScreenSpot v1 format and return the JSON file's path.

    Files: ``out_dir/images/<split_name>_00000.png`` ... and ``out_dir/screenspot_<split_name>.json`` (a JSON
    array of ``{img_filename, bbox [x, y, w, h], instruction, data_type, data_source}``). ``seed`` is a
    non-negative integer; sizes are in pixels (text boxes are sized by their word, at most ``max_size``
    wide when a font of at least 8 px allows). Raises ``ConfigError`` for bad arguments or when the
    distractors do not fit on the image.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split_name):
        raise ConfigError(f"split_name must match [A-Za-z0-9_-]+, got {split_name!r}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        example = make_example(
            seed, index, width=width, height=height, n_distractors=n_distractors,
            kinds=tuple(kinds), min_size=min_size, max_size=max_size,
        )
        filename = f"{split_name}_{index:05d}.png"
        example.image.save(out_dir / "images" / filename)
        records.append(example.record(filename))
    json_path = out_dir / f"screenspot_{split_name}.json"
    json_path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return json_path
