"""Task-aware pictures of one sample: what the model saw, with its answer and the ground truth drawn on it.

A renderer is ``fn(view, group, sample, settings) -> PIL.Image | None``, registered by name in
``mmrl.plugins.RENDERERS`` with its legend; a task names the renderer of its rollouts when it registers
(``renderer`` capability), and a plugin can add both. The shipped ones:

- ``gui``: the screenshot with the GUI-G² Gaussian reward field of the target element as a translucent
  overlay (``exp(-0.5·((x-cx)²/σx² + (y-cy)²/σy²))``, ``σ = α·side``; Tang et al. 2025), the target box in green and
  the predicted point (or box) in red, mapped back to original pixels with the sample's ``scale``;
- ``video``: a strip of frames with their timestamps over a timeline bar of the whole video, ground
  truth in green and the predicted segment in red;
- ``detection``: the image with every ground-truth box in green and every predicted box in red, each with its
  label; a prediction's caption adds the IoU of its Vision-R1 Hungarian match (``rewards.detection``), or says
  it is unmatched (REC: the first box, the one ``rec_iou_reward`` scores, against the target);
- ``diffusion``: the prompt group's images in a grid, each with its total reward, best framed green, worst red and
  the selected sample blue;
- ``plain``: the record's first image, if any (the text panels carry the rest).

Renderers read files only through ``RunView.file`` (inside the run directory) and raise ``RenderError`` with a
message for the UI when a file is refused, missing or unreadable; model output is parsed, never trusted.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from mmrl.demo.runs import RefusedPath, RunView, Sample
from mmrl.errors import DataError
from mmrl.plugins import RENDERERS, TASKS
from mmrl.vision import load_image
from rewards.detection import Detection, detections_in_pixels, hungarian_match, parse_single_box
from rewards.gui import box_geometry, box_iou, gaussian_variances, to_original
from rewards.parsing import parse_box, parse_point
from rewards.temporal import parse_interval

GREEN, RED, BLUE = (30, 170, 60), (220, 40, 40), (40, 110, 230)
MIN_SIDE = 448
"""Small images (tiny synthetic runs) are enlarged, nearest-neighbour, until their shorter side reaches this."""
STRIP_FRAMES = 8
TIMELINE_LABELS = 150
"""Pixels left of the timeline for its row labels ("truth 1.0-2.0s", "predicted ...")."""
THUMB_HEIGHT = 96


class RenderError(RuntimeError):
    """A sample cannot be drawn (its file is refused, missing or corrupt); the message is shown instead."""



def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def open_image(view: RunView, name: str) -> Image.Image:
    """The run's image ``name`` as RGB, or ``RenderError`` naming it."""
    try:
        return load_image(view.file(name))
    except (RefusedPath, FileNotFoundError, DataError) as exc:
        raise RenderError(str(exc)) from exc


def enlarge(image: Image.Image) -> tuple[Image.Image, float]:
    """``image`` scaled up by a whole factor until its shorter side is at least ``MIN_SIDE``, and the factor."""
    factor = max(1, -(-MIN_SIDE // max(1, min(image.size))))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST), float(factor)


def gaussian_field(width: int, height: int, box: list[float], alpha: float) -> np.ndarray:
    """GUI-G²'s point reward at every pixel centre of a ``width`` x ``height`` image, for the element ``box``:
    ``exp(-0.5·((x-cx)²/σx² + (y-cy)²/σy²))`` with ``σx = α·w``, ``σy = α·h`` (``rewards.gui``'s geometry and
    floored σ, vectorised)."""
    cx, cy, w, h = box_geometry(box)
    vx, vy = gaussian_variances(w, h, alpha)
    xs = (np.arange(width) + 0.5 - cx) ** 2 / vx
    ys = (np.arange(height) + 0.5 - cy) ** 2 / vy
    return np.exp(-0.5 * (ys[:, None] + xs[None, :]))


def overlay(image: Image.Image, field: np.ndarray, color=(255, 140, 0), opacity: float = 0.6) -> Image.Image:
    """``image`` with ``color`` blended in at ``opacity · field`` per pixel (``field`` in [0, 1])."""
    rgb = np.asarray(image, dtype=np.float32)
    weight = (opacity * np.clip(field, 0, 1))[..., None]
    blended = rgb * (1 - weight) + np.asarray(color, dtype=np.float32) * weight
    return Image.fromarray(blended.round().astype(np.uint8))


def predicted_geometry(completion: str | None, answer_format: str,
                       scale: list[float]) -> tuple[str, list[float]] | None:
    """``("box", [x1, y1, x2, y2])`` or ``("point", [x, y])`` in original pixels, or ``None`` if unparsable."""
    box = parse_box(completion) if answer_format == "box" else None
    if box is not None:
        return "box", to_original(box, scale)
    point = parse_point(completion)
    return ("point", to_original(point, scale)) if point is not None else None


@RENDERERS.register("gui",
                    legend="green: target box · red: predicted point/box · orange: GUI-G² Gaussian reward field of the target")
def render_gui(view: RunView, group: dict, sample: Sample, settings: dict) -> Image.Image:
    names = view.media(group, "images")
    if not names:
        raise RenderError("this record names no screenshot")
    image = open_image(view, names[0])
    fields = group.get("fields") or {}
    gt_box, scale = fields.get("gt_box"), fields.get("scale") or [1.0, 1.0]
    if gt_box is not None:
        image = overlay(image, gaussian_field(image.width, image.height, gt_box, settings.get("alpha", 0.5)))
    image, k = enlarge(image)
    draw = ImageDraw.Draw(image)
    width = max(2, round(k / 2))
    if gt_box is not None:
        draw.rectangle([v * k for v in gt_box], outline=GREEN, width=width)
    try:
        predicted = predicted_geometry(sample.completion, fields.get("answer_format", "point"), scale)
    except ValueError:  # a malformed scale in the record
        predicted = None
    if predicted is not None and predicted[0] == "box":
        draw.rectangle([v * k for v in predicted[1]], outline=RED, width=width)
    elif predicted is not None:
        x, y = (v * k for v in predicted[1])
        r = 3 * width
        draw.ellipse([x - r, y - r, x + r, y + r], outline=RED, width=width)
        draw.line([x - 2 * r, y, x + 2 * r, y], fill=RED, width=width)
        draw.line([x, y - 2 * r, x, y + 2 * r], fill=RED, width=width)
    return image


NOT_EQUAL = "\u2260"
"""The "labels differ" mark of a caption (``label ≠``)."""


def _finite_box(value) -> list[float] | None:
    """``value`` as ``[x1, y1, x2, y2]`` floats with the corners ordered, or ``None`` if it is not four finite
    numbers (records are read back from JSON and may be anything)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return None
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def ground_truth(fields: dict) -> tuple[list[list[float]], list[str]]:
    """The record's ground-truth boxes (original pixels) and their labels, aligned; malformed boxes are left out
    and a missing label is ``""``. REC records without ``gt_boxes`` fall back to ``gt_box``."""
    boxes = fields.get("gt_boxes")
    if not isinstance(boxes, list):
        boxes = [fields.get("gt_box")] if fields.get("gt_box") is not None else []
    labels = fields.get("gt_labels") if isinstance(fields.get("gt_labels"), list) else []
    kept = [(box, str(labels[i]) if i < len(labels) else "")
            for i, box in ((i, _finite_box(b)) for i, b in enumerate(boxes)) if box is not None]
    return [b for b, _ in kept], [label for _, label in kept]


def predicted_detections(completion: str | None, scale, rec: bool = False) -> list[Detection]:
    """The detections of ``completion`` with boxes in original pixels (``parse_detections``; for REC, when it finds
    nothing, the bare box of ``parse_single_box`` with an empty label). ``[]`` for unparsable output; a malformed
    ``scale`` raises ``ValueError``."""
    try:
        found, _ = detections_in_pixels(completion, scale)
        if not found and rec and (box := parse_single_box(completion)) is not None:
            found = [Detection(tuple(to_original(box, scale)), "")]
    except TypeError as exc:  # a scale that is not two numbers
        raise ValueError(f"scale must be two positive finite numbers, got {scale!r}") from exc
    return found


def detection_captions(pred: list[Detection], gt_boxes: list[list[float]], gt_labels: list[str],
                       rec: bool = False) -> list[str]:
    """One caption per prediction: ``"<label> IoU 0.62"`` for a prediction of Vision-R1's Hungarian matching
    (``hungarian_match``; IoU ``box_iou`` in original pixels), with ``" label ≠"`` when the pair's labels differ,
    and ``"<label> unmatched"`` otherwise. With ``rec`` the first prediction is paired with the single target, as
    ``rec_iou_reward`` scores it, and labels are not compared (the expression is not a category). Model labels are
    cleaned for drawing (one line, at most 40 characters)."""
    if rec:
        pairs = [(0, 0)] if pred and gt_boxes else []
    else:
        pairs = hungarian_match(pred, gt_boxes, gt_labels)
    partner = dict(pairs)
    captions = []
    for i, p in enumerate(pred):
        name = f"{_printable(p.label)} " if p.label.strip() else ""
        if i not in partner:
            captions.append(f"{name}unmatched")
            continue
        j = partner[i]
        iou = box_iou(p.box, gt_boxes[j])
        iou = iou if math.isfinite(iou) else 0.0
        differs = not rec and p.label != gt_labels[j]
        captions.append(f"{name}IoU {iou:.2f}" + (f" label {NOT_EQUAL}" if differs else ""))
    return captions


def _clipped(box, k: float, width: int, height: int) -> list[float]:
    """``box`` (original pixels) in the ``k``-times enlarged picture, clipped to its ``width`` x ``height``: a box
    far outside the image is drawn along the nearest border."""
    x1, y1, x2, y2 = (float(v) * k for v in box)
    clamp = lambda v, hi: min(max(v, 0.0), hi - 1.0)  # noqa: E731  (inf clamps too; NaN never reaches here)
    x1, x2 = sorted((clamp(x1, width), clamp(x2, width)))
    y1, y2 = sorted((clamp(y1, height), clamp(y2, height)))
    return [x1, y1, x2, y2]


@lru_cache(maxsize=8)
def _caption_font(size: int) -> tuple[ImageFont.ImageFont, bool]:
    """A bold font for the captions and whether it draws ``≠``: DejaVu Sans Bold where the system has it (Debian's
    ``fonts-dejavu-core``), else Pillow's default font, which lacks the glyph."""
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size), True
    except OSError:
        return _font(size), False


def _printable(text: str, limit: int = 40) -> str:
    """Model text made safe to draw on one line: whitespace runs (newlines included) become one space, control
    characters go, and the result is cut to ``limit`` characters."""
    text = " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _caption(draw: ImageDraw.ImageDraw, font, text: str, anchor: tuple[float, float], below: bool,
             color, size: tuple[int, int]) -> None:
    """``text`` in white on a ``color`` tag just above (or ``below``) ``anchor``, kept inside the picture."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h, pad = right - left, bottom - top, 2
    x = min(max(anchor[0], 0), max(0, size[0] - w - 2 * pad))
    y = anchor[1] + 1 if below else anchor[1] - h - 2 * pad - 1
    y = min(max(y, 0), max(0, size[1] - h - 2 * pad))
    draw.rectangle([x, y, x + w + 2 * pad, y + h + 2 * pad], fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill="white", font=font)


@RENDERERS.register("detection",
                    legend="green: ground-truth boxes and labels · red: predicted boxes, each with its label and the "
                           "IoU of its Hungarian match (Vision-R1; REC: the first box against the target), "
                           "\"unmatched\", or \"label \u2260\" when the matched labels differ")
def render_detection(view: RunView, group: dict, sample: Sample, settings: dict) -> Image.Image:
    names = view.media(group, "images")
    if not names:
        raise RenderError("this record names no image")
    image, k = enlarge(open_image(view, names[0]))
    fields = group.get("fields") if isinstance(group.get("fields"), dict) else {}
    rec = "gt_box" in fields
    gt_boxes, gt_labels = ground_truth(fields)
    note = None
    try:
        pred = predicted_detections(sample.completion, fields.get("scale") or [1.0, 1.0], rec)
    except ValueError:  # a malformed scale in the record
        pred, note = [], "bad scale in the record: no boxes drawn"
    pred = [p for p in pred if all(math.isfinite(v) for v in p.box)]
    captions = detection_captions(pred, gt_boxes, gt_labels, rec)
    if note is None and not pred:
        note = "no boxes parsed"
    draw = ImageDraw.Draw(image)
    size = image.size
    line = max(2, round(k / 2), round(min(size) / 400))
    font, has_not_equal = _caption_font(max(14, round(min(size) / 32)))
    for box, label in zip(gt_boxes, gt_labels):
        corners = _clipped(box, k, *size)
        draw.rectangle(corners, outline=GREEN, width=line)
        if label:
            _caption(draw, font, _printable(label), (corners[0], corners[1]), False, GREEN, size)
    for p, text in zip(pred, captions):
        corners = _clipped(p.box, k, *size)
        draw.rectangle(corners, outline=RED, width=line)
        text = text if has_not_equal else text.replace(NOT_EQUAL, "!=")
        _caption(draw, font, text, (corners[0], corners[3]), True, RED, size)
    if note is not None:
        _caption(draw, font, note, (0, size[1]), False, (40, 40, 40), size)
    return image


def read_frames(path: Path, count: int) -> tuple[list[Image.Image], list[float], float]:
    """``count`` frames evenly spread over the video (first and last included), their times and the duration."""
    import decord  # video-only dependency

    from mmrl.vision import probe_video

    info = probe_video(path)
    indices = np.linspace(0, info.n_frames - 1, min(count, info.n_frames)).round().astype(int).tolist()
    try:
        frames = decord.VideoReader(str(path)).get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        raise DataError(f"cannot read video {path}: {exc}") from exc
    return [Image.fromarray(f) for f in frames], [i / info.fps for i in indices], info.duration


@RENDERERS.register("video",
                    legend="green: ground-truth segment · red: predicted segment (the model's answer, as parsed)")
def render_video(view: RunView, group: dict, sample: Sample, settings: dict) -> Image.Image:
    names = view.media(group, "videos")
    if not names:
        raise RenderError("this record names no video")
    try:
        frames, times, duration = read_frames(view.file(names[0]), STRIP_FRAMES)
    except (RefusedPath, FileNotFoundError, DataError) as exc:
        raise RenderError(str(exc)) from exc
    fields = group.get("fields") or {}
    duration = float(fields.get("duration") or duration)
    thumbs = [ImageOps.contain(f, (10 * THUMB_HEIGHT, THUMB_HEIGHT)) for f in frames]
    gap, label, bar = 4, 16, 56
    width = sum(t.width for t in thumbs) + gap * (len(thumbs) + 1)
    canvas = Image.new("RGB", (max(width, 480), THUMB_HEIGHT + label + bar + 3 * gap), "white")
    draw, font = ImageDraw.Draw(canvas), _font(12)
    x = gap
    for thumb, t in zip(thumbs, times):
        canvas.paste(thumb, (x, gap))
        draw.text((x, THUMB_HEIGHT + gap + 2), f"{t:.1f}s", fill="black", font=font)
        x += thumb.width + gap
    top, left, right = THUMB_HEIGHT + label + 2 * gap, gap + TIMELINE_LABELS, canvas.width - gap

    def span(a: float, b: float, row: int, color, text: str) -> None:
        scale = (right - left) / duration if duration > 0 else 0.0
        x1, x2 = left + max(0.0, min(a, b)) * scale, left + min(duration, max(a, b)) * scale
        y = top + row * 18
        draw.rectangle([x1, y, max(x2, x1 + 2), y + 12], fill=color)
        draw.text((gap, y), text, fill="black", font=font)

    draw.rectangle([left, top - 2, right, top + 38], outline=(160, 160, 160))
    gt = fields.get("gt_interval")
    if isinstance(gt, list) and len(gt) == 2:
        span(float(gt[0]), float(gt[1]), 0, GREEN, f"truth {gt[0]:.1f}-{gt[1]:.1f}s")
    predicted = parse_interval(sample.completion)
    if predicted is not None:
        span(*predicted, 1, RED, f"predicted {predicted[0]:.1f}-{predicted[1]:.1f}s")
    draw.text((left, top + 40), "0s", fill="black", font=font)
    draw.text((right - 40, top + 40), f"{duration:.1f}s", fill="black", font=font)
    return canvas


@RENDERERS.register("diffusion",
                    legend="the prompt group: green frame best reward, red worst, blue the selected image")
def render_diffusion(view: RunView, group: dict, sample: Sample, settings: dict) -> Image.Image:
    names = group.get("images") or []
    totals = group.get("total") or []
    scored = [(t, i) for i, t in enumerate(totals) if isinstance(t, (int, float))]
    best = max(scored)[1] if scored else None
    worst = min(scored)[1] if scored else None
    tiles = []
    for i, name in enumerate(names):
        if name is None:
            tiles.append(None)
            continue
        tiles.append(ImageOps.contain(open_image(view, name), (256, 256)))
    side = max([t.width for t in tiles if t is not None] + [64])
    columns = min(4, max(1, len(names)))
    rows = -(-len(names) // columns)
    cell = side + 12
    canvas = Image.new("RGB", (columns * cell, rows * (cell + 18)), "white")
    draw, font = ImageDraw.Draw(canvas), _font(13)
    for i, tile in enumerate(tiles):
        x, y = (i % columns) * cell, (i // columns) * (cell + 18)
        if tile is None:
            draw.text((x + 8, y + side // 2), "(not saved)", fill="gray", font=font)
        else:
            canvas.paste(tile, (x + 6, y + 6))
        frame = BLUE if i == sample.index else GREEN if i == best else RED if i == worst else None
        if frame is not None:
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], outline=frame, width=4)
        mark = " best" if i == best else " worst" if i == worst else ""
        total = _item_text(totals, i)
        draw.text((x + 6, y + cell), f"#{i} r={total}{mark}", fill="black", font=font)
    return canvas


def _item_text(values: list, i: int) -> str:
    value = values[i] if i < len(values) else None
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


@RENDERERS.register("plain")
def render_plain(view: RunView, group: dict, sample: Sample, settings: dict) -> Image.Image | None:
    names = view.media(group, "images")
    return enlarge(open_image(view, names[0]))[0] if names else None


def renderer_for(kind: str, group: dict) -> str:
    """The renderer name for a run of ``kind`` (a task name, or ``diffusion``): the task's declared renderer; a
    run whose task is not installed here is recognised by its record's fields."""
    if kind in TASKS:
        return TASKS.capability(kind, "renderer")
    fields = group.get("fields") or {}
    if kind == "diffusion" or group.get("kind") == "diffusion":
        return "diffusion"
    if "gt_boxes" in fields:
        return "detection"
    if "gt_box" in fields:
        return "gui"
    if "gt_interval" in fields:
        return "video"
    return "plain"
