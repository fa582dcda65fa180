"""Mini-GenEval: a seeded synthetic world of coloured shapes, small enough for tiny diffusion pipelines, with
prompts and metadata in GenEval's exact format (``mmrl.eval.geneval``), a renderer that draws an image satisfying
a metadata row, and the rule-based detector ``"shapes"`` (``GENEVAL_DETECTORS``) that ``mmrl eval geneval
--detector shapes`` and the ``geneval`` image reward use on it.

The world
---------
An image is ``resolution`` x ``resolution`` pixels (32 by default; any size from ``MIN_RESOLUTION``) of a plain
grey background (``BACKGROUND``) holding solid, non-overlapping shapes. The object classes are shape kinds
(``CLASSES``: circle, square, triangle pointing up), every shape as wide as it is tall, its side a share
``SIZES`` of the image side (7 to 9 px at 32 px), and at least ``GAP`` of the side apart from the others' boxes.
Colours are the saturated ones of GenEval's ten (``COLOURS``: red, yellow, green, blue, purple, with
``mmrl.colours``'s values), at least 46 degrees of hue apart, all far from grey.

Prompts (``prompts``)
---------------------
Row ``i`` depends only on ``(seed, i)``: the same seed regenerates the same rows and more rows extend fewer. Its
tag is ``TAGS[i % 6]``, so the six tags come in equal shares (GenEval's 553 prompts: 80 to 100 each). Metadata
and wording follow ``data/geneval/evaluation_metadata.jsonl`` (keys in its order: tag, include, exclude, prompt):

=============  =====================================================  ==========================================
tag            include (exclude)                                       prompt
=============  =====================================================  ==========================================
single_object  ``[{class A, count 1}]``                                ``a photo of a circle``
two_object     ``[{A, 1}, {B, 1}]``, A ≠ B                             ``a photo of a circle and a square``
counting       ``[{A, N}]`` (exclude ``[{A, N + 1}]``), N in 2..4      ``a photo of three squares``
colors         ``[{A, 1, color C}]``                                   ``a photo of a red circle``
position       ``[{B, 1}, {A, 1, position [R, 0]}]``, A ≠ B            ``a photo of a circle left of a square``
color_attr     ``[{A, 1, color C}, {B, 1, color D}]``, A ≠ B, C ≠ D    ``a photo of a red circle and a blue square``
=============  =====================================================  ==========================================

``parse_prompt`` reads that wording back into the metadata row (``parse_prompt(row["prompt"]) == row``).

Rendering (``render``)
----------------------
The include clauses' objects, exactly ``count`` of each (uncoloured ones in a random colour of ``COLOURS``), are
placed at random; a layout is kept only when the objects' true boxes and colours, given to ``geneval.judge`` as
detections of score 1, satisfy the metadata (so positions obey GenEval's relative-position rule with its 0.1
margin), else it is drawn again. Shapes are drawn without anti-aliasing, so every pixel is background or one
palette colour.

The detector (``ShapesDetector``, ``"shapes"``)
-----------------------------------------------
Per image: a pixel's colour is the palette colour nearest in hue (hue survives blending with grey, so blurred
edges keep their colour), and it belongs to an object when its chroma (max − min of its 8-bit channels; grey has
none, the palette 137 to 216) exceeds ``min_chroma`` and is at least half (``EDGE_LEVEL``) that colour's chroma:
the half-maximum cut puts a blurred straight edge where the sharp edge was. Each colour's pixels are split into
8-connected blobs (``scipy.ndimage.label``); a blob is one object, its box the pixel extent ``[x1, y1, x2 + 1,
y2 + 1]``, its colour that palette colour, and its class the shape whose fill-ratio prototype (area / box area,
``FILL``) is nearest. Its score, unthresholded, is the product of five factors in (0, 1] (floored at 1e-6), all
1 or nearly on rendered images (every score above 0.98 at 32 and 64 px, so counting's 0.9 threshold passes):

* shape: the posterior of the chosen class under Gaussians of width ``FILL_SIGMA`` around the ``FILL`` prototypes
  (equal priors): near 1 for a clean fill ratio, 1/2 half-way between two classes;
* colour: the mean over the blob's pixels of ``min(1, chroma / (0.8 · palette chroma))`` times
  ``max(0, 1 − (hue distance / 45°)²)``: washed-out or off-hue pixels lower it;
* size: ``min(1, area / (MIN_AREA · H · W))``: specks score low;
* aspect: ``min(1, (short side / long side) / 0.75)``: every shape is square-boxed, so elongated blobs (two
  shapes merged, smears) score low;
* isolation: the share of the blob's surrounding pixels (its 8-neighbours outside it) that are background: a
  shape stands on the background, while the blobs of noise or of touching shapes border other colours.

Pre-training a tiny pipeline on it
----------------------------------
``pretraining_world`` is the pre-training world ``"mini_geneval"`` (``PRETRAIN_WORLDS``): rendered images of
seeded prompts, on which ``model.tiny_world: mini_geneval`` (with ``model.tiny_vae_steps``, so that samples decode
to shapes) pre-trains a tiny pipeline once, cached, before RL or steering on this world.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mmrl.colours import rgb8
from mmrl.errors import ConfigError
from mmrl.eval import geneval
from mmrl.plugins import GENEVAL_DETECTORS, PRETRAIN_WORLDS
from mmrl.store import atomic_write_text, cached_build

CLASSES = ("circle", "square", "triangle")
"""The object classes (GenEval object names of this world)."""
COLOURS = ("red", "yellow", "green", "blue", "purple")
"""The colours, a subset of ``geneval.COLOURS``."""
PALETTE = rgb8(COLOURS)
"""8-bit RGB of each colour (``mmrl.colours``)."""
BACKGROUND = (200, 200, 200)
COUNTS = (2, 3, 4)
"""Counts of the counting prompts (GenEval's)."""
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
TAGS = geneval.TAGS
SIZES = (0.22, 0.30)
"""A shape's side as a share of the image side: drawn uniformly in this range (then rounded to pixels)."""
GAP = 0.07
"""Minimum clearance between two shapes' boxes, as a share of the image side (at least 2 px)."""
MIN_RESOLUTION = 24
MAX_TRIES = 2000
"""Layouts ``render`` draws before giving up on a metadata row."""
FILL = {"circle": 0.78, "square": 1.00, "triangle": 0.53}
"""Fill-ratio prototypes (area / box area): π/4 and 1/2 as rasterised (measured 0.75-0.81 and 0.50-0.56)."""
FILL_SIGMA = 0.06
MIN_CHROMA = 40.0
"""Default chroma (8-bit max − min) above which a pixel belongs to an object."""
EDGE_LEVEL = 0.5
"""A pixel belongs to an object from this share of its palette colour's chroma on (half maximum)."""
MIN_AREA = 0.02
"""A blob smaller than this share of the image scores lower (size factor)."""
CLEAN_CHROMA = 0.8
HUE_TOLERANCE = 45.0
MIN_ASPECT = 0.75
JSONL_NAME = "mini_geneval.jsonl"


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of ``[..., 3]`` RGB (0 where the pixel is grey)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    c = np.where(mx > mn, mx - mn, 1.0)
    h = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return np.where(mx > mn, h * 60.0, 0.0)


PALETTE_HUES = _hue(np.array(list(PALETTE.values())))
PALETTE_CHROMA = np.array([max(c) - min(c) for c in PALETTE.values()], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------- prompts

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _a(*words: str) -> str:
    return f"{_article(words[0])} {' '.join(words)}"


def prompt_row(tag: str, rng: random.Random) -> dict[str, Any]:
    """One metadata row of ``tag`` drawn with ``rng`` (module docstring's table)."""
    a, b = rng.sample(CLASSES, 2)
    c, d = rng.sample(COLOURS, 2)
    if tag == "single_object":
        include, text = [{"class": a, "count": 1}], _a(a)
    elif tag == "two_object":
        include, text = [{"class": a, "count": 1}, {"class": b, "count": 1}], f"{_a(a)} and {_a(b)}"
    elif tag == "counting":
        n = rng.choice(COUNTS)
        row = {"tag": tag, "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}]}
        return {**row, "prompt": f"a photo of {NUMBER_WORDS[n]} {a}s"}
    elif tag == "colors":
        include, text = [{"class": a, "count": 1, "color": c}], _a(c, a)
    elif tag == "position":
        relation = rng.choice(geneval.RELATIONS)
        include = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}]
        text = f"{_a(a)} {relation} {_a(b)}"
    elif tag == "color_attr":
        include = [{"class": a, "count": 1, "color": c}, {"class": b, "count": 1, "color": d}]
        text = f"{_a(c, a)} and {_a(d, b)}"
    else:
        raise ValueError(f"unknown tag {tag!r}; valid: {', '.join(TAGS)}")
    return {"tag": tag, "include": include, "prompt": f"a photo of {text}"}


def prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` metadata rows in GenEval's format; row ``i`` has tag ``TAGS[i % 6]`` and depends only on
    ``(seed, i)``."""
    return [prompt_row(TAGS[i % len(TAGS)], random.Random(f"mini-geneval/{seed}/{i}")) for i in range(n)]


_OBJ = "(?:a|an) (?:(?P<{c}>{colours}) )?(?P<{k}>{classes})"


def _obj(c: str, k: str) -> str:
    return _OBJ.format(c=c, k=k, colours="|".join(COLOURS), classes="|".join(CLASSES))


_RELATION = "|".join(geneval.RELATIONS)
_PATTERNS = {
    "counting": re.compile(f"a photo of (?P<n>{'|'.join(NUMBER_WORDS.values())}) (?P<a>{'|'.join(CLASSES)})s"),
    "position": re.compile(f"a photo of (?:a|an) (?P<a>{'|'.join(CLASSES)}) (?P<rel>{_RELATION}) "
                           f"(?:a|an) (?P<b>{'|'.join(CLASSES)})"),
    "pair": re.compile(f"a photo of {_obj('c', 'a')} and {_obj('d', 'b')}"),
    "single": re.compile(f"a photo of {_obj('c', 'a')}"),
}


def parse_prompt(text: str) -> dict[str, Any] | None:
    """The metadata row a prompt of this world's wording states (the inverse of ``prompts``), else ``None``.
    Two objects are ``two_object`` without colours, ``color_attr`` when both have one; one colour of two is not
    this world's wording (``None``)."""
    text = " ".join(text.split())
    if m := _PATTERNS["counting"].fullmatch(text):
        n = next(k for k, w in NUMBER_WORDS.items() if w == m["n"])
        return {"tag": "counting", "include": [{"class": m["a"], "count": n}],
                "exclude": [{"class": m["a"], "count": n + 1}], "prompt": text}
    if m := _PATTERNS["position"].fullmatch(text):
        include = [{"class": m["b"], "count": 1}, {"class": m["a"], "count": 1, "position": [m["rel"], 0]}]
        return {"tag": "position", "include": include, "prompt": text}
    if m := _PATTERNS["pair"].fullmatch(text):
        if (m["c"] is None) != (m["d"] is None):
            return None
        include = [{"class": m["a"], "count": 1}, {"class": m["b"], "count": 1}]
        if m["c"] is not None:
            include[0]["color"], include[1]["color"] = m["c"], m["d"]
        return {"tag": "two_object" if m["c"] is None else "color_attr", "include": include, "prompt": text}
    if m := _PATTERNS["single"].fullmatch(text):
        clause = {"class": m["a"], "count": 1, **({"color": m["c"]} if m["c"] else {})}
        return {"tag": "colors" if m["c"] else "single_object", "include": [clause], "prompt": text}
    return None


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """``rows`` as JSON lines in ``path`` (atomically), the format of GenEval's ``evaluation_metadata.jsonl`` and
    of diffusion prompt files (``mmrl.diffusion.prompts``)."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return Path(path)


def prompt_file(n: int = 600, seed: int = 0, cache_dir: str = "~/.cache/mmrl") -> Path:
    """The JSONL of ``prompts(n, seed)``, written once into the cache (``mmrl.store.cached_build``)."""
    return cached_build(cache_dir, "mini_geneval", {"n": n, "seed": seed, "version": 1}, JSONL_NAME,
                        lambda folder: write_jsonl(prompts(n, seed), folder / JSONL_NAME))


# ---------------------------------------------------------------------------------------------------- rendering

def _shape_mask(kind: str, x: int, y: int, side: int, resolution: int) -> np.ndarray:
    """Boolean ``[R, R]`` mask of one shape whose box has top-left ``(x, y)`` and side ``side`` pixels."""
    canvas = Image.new("L", (resolution, resolution), 0)
    draw = ImageDraw.Draw(canvas)
    x2, y2 = x + side - 1, y + side - 1
    if kind == "circle":
        draw.ellipse([x, y, x2, y2], fill=255)
    elif kind == "square":
        draw.rectangle([x, y, x2, y2], fill=255)
    elif kind == "triangle":
        draw.polygon([(x, y2), (x2, y2), ((x + x2) / 2, y)], fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}; valid: {', '.join(CLASSES)}")
    return np.asarray(canvas) > 0


def _extent(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _layout(objects: list[tuple[str, str]], rng: random.Random, resolution: int):
    """Random non-overlapping boxes ``(x, y, side)`` for ``objects``, or ``None`` when one did not fit."""
    gap = max(2, round(GAP * resolution))
    placed: list[tuple[int, int, int]] = []
    for _ in objects:
        for _ in range(50):
            side = round(rng.uniform(*SIZES) * resolution)
            x, y = rng.randint(1, resolution - side - 1), rng.randint(1, resolution - side - 1)
            if all(x + side + gap <= px or px + ps + gap <= x or y + side + gap <= py or py + ps + gap <= y
                   for px, py, ps in placed):
                placed.append((x, y, side))
                break
        else:
            return None
    return placed


def render(metadata: dict[str, Any], rng: random.Random, resolution: int = 32) -> Image.Image:
    """An RGB image of this world satisfying ``metadata`` (module docstring): exactly ``count`` objects per include
    clause, required colours (others random), positions holding under GenEval's rule. ``ValueError`` for a class
    or colour outside the world, or when ``MAX_TRIES`` layouts all failed (e.g. contradictory metadata)."""
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution {resolution} is below the minimum {MIN_RESOLUTION}")
    for clause in metadata.get("include", []):
        if clause["class"] not in CLASSES or clause.get("color", COLOURS[0]) not in COLOURS:
            raise ValueError(f"{clause}: not an object of this world (classes {CLASSES}, colours {COLOURS})")
    for _ in range(MAX_TRIES):
        objects = [(c["class"], c.get("color") or rng.choice(COLOURS))
                   for c in metadata.get("include", []) for _ in range(c["count"])]
        boxes = _layout(objects, rng, resolution)
        if boxes is None:
            continue
        masks = [_shape_mask(kind, x, y, side, resolution) for (kind, _), (x, y, side) in zip(objects, boxes)]
        truth = [{"class": kind, "box": _extent(mask), "score": 1.0, "color": colour}
                 for (kind, colour), mask in zip(objects, masks)]
        if geneval.judge(metadata, truth)[0]:
            pixels = np.empty((resolution, resolution, 3), dtype=np.uint8)
            pixels[:] = BACKGROUND
            for (_, colour), mask in zip(objects, masks):
                pixels[mask] = PALETTE[colour]
            return Image.fromarray(pixels, "RGB")
    raise ValueError(f"no layout satisfying {metadata.get('prompt')!r} in {MAX_TRIES} tries")


@PRETRAIN_WORLDS.register("mini_geneval")
def pretraining_world(n: int, resolution: int, generator) -> tuple[Any, list[str]]:
    """``n`` images in [-1, 1] (a float tensor ``[n, 3, R, R]``) and their prompts, to pre-train a tiny diffusion
    pipeline on this world (``model.tiny_world: mini_geneval``): the rows of ``prompts(n, seed)`` with ``seed``
    drawn from the torch ``generator``, image ``i`` rendered with ``random.Random(seed * 1_000_003 + i)``."""
    import torch

    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    rows = prompts(n, seed)
    pixels = np.stack([np.asarray(render(row, random.Random(seed * 1_000_003 + i), resolution))
                       for i, row in enumerate(rows)])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [row["prompt"] for row in rows]


def corrupt(metadata: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A row whose images ``metadata`` should reject, for testing scorers: a colour changed (colors, color_attr),
    the count changed by one (counting), the relation reversed (position), or the first object's class changed
    to one not in the prompt (single_object, two_object)."""
    row = json.loads(json.dumps(metadata))
    include = row["include"]
    tag = row["tag"]
    if tag in ("colors", "color_attr"):
        clause = include[rng.randrange(len(include))]
        clause["color"] = rng.choice([c for c in COLOURS if c != clause["color"]])
    elif tag == "counting":
        n = include[0]["count"]
        include[0]["count"] = n - 1 if n > 2 and rng.random() < 0.5 else n + 1
        row["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
    elif tag == "position":
        opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        include[1]["position"][0] = opposite[include[1]["position"][0]]
    else:
        used = {c["class"] for c in include}
        include[0]["class"] = rng.choice([k for k in CLASSES if k not in used])
    return row


def write_layout(rows: list[dict[str, Any]], out: str | Path, per_prompt: int = 4, resolution: int = 32,
                 seed: int = 0, draw: list[dict[str, Any]] | None = None) -> Path:
    """GenEval's image layout (``OUT/00000/metadata.jsonl``, ``OUT/00000/samples/0000.png`` ...) of rendered
    images: ``per_prompt`` renderings of each row of ``draw`` (default ``rows``) under the metadata of the
    matching row of ``rows`` (so ``draw`` = corrupted rows gives images that should be judged wrong)."""
    out = Path(out)
    for index, (row, target) in enumerate(zip(rows, draw or rows)):
        folder = out / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(row) + "\n")
        rng = random.Random(f"mini-geneval-render/{seed}/{index}")
        for k in range(per_prompt):
            render(target, rng, resolution).save(folder / "samples" / f"{k:04d}.png")
    return out


# ---------------------------------------------------------------------------------------------------- detector

def _isolation(blob: np.ndarray, foreground: np.ndarray) -> float:
    """The share of the pixels around ``blob`` (8-neighbours outside it) that are background; both masks cover the
    blob's box grown by one pixel, ``foreground`` False outside the image."""
    ring = ndimage.binary_dilation(blob, structure=np.ones((3, 3), bool)) & ~blob
    return float((ring & ~foreground).sum() / ring.sum())


def _blob_detection(colour: int, area: int, box: tuple[slice, slice], chroma: np.ndarray, hue_gap: np.ndarray,
                    isolation: float, image_area: int) -> geneval.Detection:
    """One blob's detection (module docstring: class by nearest fill prototype, score as five factors)."""
    height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
    fill = area / (height * width)
    likelihood = {k: math.exp(-((fill - f) / FILL_SIGMA) ** 2 / 2) for k, f in FILL.items()}
    kind = max(likelihood, key=likelihood.get)
    shape = likelihood[kind] / sum(likelihood.values()) if likelihood[kind] > 0 else 1 / len(FILL)
    clean = np.minimum(1.0, chroma / (CLEAN_CHROMA * PALETTE_CHROMA[colour]))
    colour_score = float(np.mean(clean * np.clip(1 - (hue_gap / HUE_TOLERANCE) ** 2, 0, 1)))
    size = min(1.0, area / (MIN_AREA * image_area))
    aspect = min(1.0, min(height, width) / max(height, width) / MIN_ASPECT)
    score = max(shape * colour_score * size * aspect * isolation, 1e-6)
    return {"class": kind, "box": [float(box[1].start - 1), float(box[0].start - 1), float(box[1].stop - 1),
                                   float(box[0].stop - 1)], "score": score, "color": COLOURS[colour]}


def find_shapes(image: Image.Image, min_chroma: float = MIN_CHROMA) -> list[geneval.Detection]:
    """Every blob of ``image`` as a detection (module docstring), in colour order then reading order."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    chroma = pixels.max(axis=-1) - pixels.min(axis=-1)
    hue_distance = np.abs(_hue(pixels)[..., None] - PALETTE_HUES)
    hue_distance = np.minimum(hue_distance, 360 - hue_distance)
    nearest = hue_distance.argmin(axis=-1)
    hue_gap = hue_distance.min(axis=-1)
    # padded by one pixel of background, so that every blob's box grown by one pixel lies inside
    foreground = (chroma > min_chroma) & (chroma >= EDGE_LEVEL * PALETTE_CHROMA[nearest])
    foreground, nearest = np.pad(foreground, 1), np.pad(nearest, 1)
    chroma, hue_gap = np.pad(chroma, 1), np.pad(hue_gap, 1)
    detections = []
    for colour in range(len(COLOURS)):
        labels, _ = ndimage.label(foreground & (nearest == colour), structure=np.ones((3, 3)))
        for index, box in enumerate(ndimage.find_objects(labels), 1):
            grown = tuple(slice(b.start - 1, b.stop + 1) for b in box)
            isolation = _isolation(labels[grown] == index, foreground[grown])
            blob = labels[box] == index
            detections.append(_blob_detection(colour, int(blob.sum()), box, chroma[box][blob], hue_gap[box][blob],
                                              isolation, pixels.shape[0] * pixels.shape[1]))
    return detections


@GENEVAL_DETECTORS.register("shapes")
class ShapesDetector:
    """The rule-based detector of the mini-GenEval world (module docstring); weight-free, deterministic."""

    def __init__(self, *, min_chroma: float = MIN_CHROMA):
        if not 0 <= min_chroma < 255:
            raise ConfigError(f"detector.min_chroma={min_chroma!r}: expected a number in [0, 255)")
        self.min_chroma = min_chroma

    def detect(self, images: list[Image.Image], metadata: list[dict[str, Any]]) -> list[list[geneval.Detection]]:
        """Every blob of each image (the metadata is not read)."""
        return [find_shapes(image, self.min_chroma) for image in images]

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------------------------------------- command

def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.mini_geneval OUT.jsonl [--n N] [--seed S] [--images DIR --per-prompt K --resolution R]``:
    write the prompt file, and optionally rendered reference images in GenEval's layout."""
    parser = argparse.ArgumentParser(prog="python -m tasks.mini_geneval", description=main.__doc__)
    parser.add_argument("out", help="the prompt file to write (JSON lines, GenEval's metadata format)")
    parser.add_argument("--n", type=int, default=600, help="number of prompts (default 600, 100 per tag)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", help="also write rendered images in GenEval's layout into this folder")
    parser.add_argument("--per-prompt", type=int, default=4, help="images per prompt with --images (default 4)")
    parser.add_argument("--resolution", type=int, default=32, help="image side with --images (default 32)")
    args = parser.parse_args(argv)
    rows = prompts(args.n, args.seed)
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} prompts to {args.out}")
    if args.images:
        write_layout(rows, args.images, args.per_prompt, args.resolution, args.seed)
        print(f"wrote {args.per_prompt} rendered images per prompt to {args.images}")


if __name__ == "__main__":
    main()
