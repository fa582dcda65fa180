"""GUI-grounding rewards: Gaussian point and coverage rewards (GUI-G²), click-in-box and IoU baselines.

GUI-G² ("GUI-G²: Gaussian Reward Modeling for GUI Grounding", Tang et al., 2025) models the target element
with box ``[x1, y1, x2, y2]``, centre ``(cx, cy)``, width ``w`` and height ``h`` as the 2-D Gaussian
``N((cx, cy), diag(σx², σy²))`` with ``σx = α·w`` and ``σy = α·h`` (α = 0.5 is the paper's best). Two rewards
come from it: the *point* reward (the Gaussian density at the predicted point, scaled to peak 1) and the
*coverage* reward (the Bhattacharyya coefficient between the predicted box's Gaussian and the element's).
The authors sum point + coverage + format with equal weight; binary click-in-box and IoU are the baselines.

Boxes are ``[x1, y1, x2, y2]`` in pixels throughout. Ground-truth boxes are in ORIGINAL image pixels while the
model answers in pixels of the (resized) image it saw; ``to_original`` maps an answer back with the
per-sample ``scale = [sx, sy] = original / seen``.

Completion-level rewards follow TRL's signature ``fn(completions, **fields) -> list[float]``: every field is a
list aligned with ``completions`` and unknown fields are ignored. Each item is scored on its own; a malformed
completion or field item, or a non-finite score, gives 0.0 and never raises. ``alpha`` is a scalar
hyperparameter (bind it with ``functools.partial``); a non-positive one is a configuration error and raises
``ValueError`` before any item is scored.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from rewards.parsing import is_exact_box, is_exact_point, parse_box, parse_point, score_each

SIGMA_FLOOR = 1e-6
"""Smallest σ in pixels. A zero-width or zero-height element (or predicted box) would give σ = 0 and a
division by zero; with this floor a degenerate box behaves as a (near) Dirac: a point exactly on it scores 1,
a point 1e-4 px away already scores 0. This departs from the paper, which does not discuss the case."""


def _corners(box: Sequence[float]) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` as floats with ``x1 <= x2`` and ``y1 <= y2``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def box_geometry(box: Sequence[float]) -> tuple[float, float, float, float]:
    """``(cx, cy, w, h)`` of ``[x1, y1, x2, y2]`` (corners in either order)."""
    x1, y1, x2, y2 = _corners(box)
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def gaussian_variances(w: float, h: float, alpha: float) -> tuple[float, float]:
    """``(σx², σy²)`` with ``σ = max(α·size, SIGMA_FLOOR)``."""
    sx = max(alpha * w, SIGMA_FLOOR)
    sy = max(alpha * h, SIGMA_FLOOR)
    return sx * sx, sy * sy


def gaussian_point(pred_xy: Sequence[float], gt_box: Sequence[float], alpha: float = 0.5) -> float:
    """GUI-G² point reward ``exp(-0.5·((px-cx)²/σx² + (py-cy)²/σy²))``, ``σx = α·w``, ``σy = α·h``.

    1.0 at the element centre; at the box edge along x it is ``exp(-0.5·(0.5/α)²)`` (``exp(-0.5)`` for
    α = 0.5). ``σ`` is floored at ``SIGMA_FLOOR`` for a degenerate box.
    """
    px, py = (float(v) for v in pred_xy)
    cx, cy, w, h = box_geometry(gt_box)
    vx, vy = gaussian_variances(w, h, alpha)
    dx, dy = px - cx, py - cy
    return math.exp(-0.5 * (dx * dx / vx + dy * dy / vy))


def gaussian_coverage(pred_box: Sequence[float], gt_box: Sequence[float], alpha: float = 0.5) -> float:
    """GUI-G² coverage reward: the Bhattacharyya coefficient ``exp(-D)`` of the two boxes' Gaussians.

    ``Σp = diag((α·wp)², (α·hp)²)`` around the predicted centre ``μp``, ``Σg`` likewise for the element,
    ``Σ̄ = (Σp + Σg)/2``, ``Δμ = μp - μg``:
    ``D = 1/8·Δμᵀ Σ̄⁻¹ Δμ + 1/2·ln(det Σ̄ / sqrt(det Σp · det Σg))``.
    1.0 for identical boxes; both a shift and a size mismatch lower it. The log-determinant term is computed
    as a sum of logs of the diagonal entries.
    """
    cxp, cyp, wp, hp = box_geometry(pred_box)
    cxg, cyg, wg, hg = box_geometry(gt_box)
    vpx, vpy = gaussian_variances(wp, hp, alpha)
    vgx, vgy = gaussian_variances(wg, hg, alpha)
    vbx, vby = (vpx + vgx) / 2, (vpy + vgy) / 2
    dx, dy = cxp - cxg, cyp - cyg
    mahalanobis = dx * dx / vbx + dy * dy / vby
    log_det_ratio = math.log(vbx) + math.log(vby) - 0.5 * (
        math.log(vpx) + math.log(vpy) + math.log(vgx) + math.log(vgy)
    )
    distance = mahalanobis / 8 + log_det_ratio / 2
    return min(1.0, math.exp(-distance))


def click_in_box(pred_xy: Sequence[float], gt_box: Sequence[float]) -> float:
    """1.0 if the point lies in the box, edges included (ScreenSpot's accuracy criterion), else 0.0."""
    px, py = (float(v) for v in pred_xy)
    x1, y1, x2, y2 = _corners(gt_box)
    inside = x1 <= px <= x2 and y1 <= py <= y2
    return 1.0 if inside else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes; 0.0 when the union has zero area (two degenerate boxes)."""
    ax1, ay1, ax2, ay2 = _corners(a)
    bx1, by1, bx2, by2 = _corners(b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def to_original(coords: Sequence[float], scale: Sequence[float]) -> list[float]:
    """Map ``[x, y]`` or ``[x1, y1, x2, y2]`` from the pixels the model saw to original pixels:
    ``x·sx``, ``y·sy`` with ``scale = [sx, sy] = original / seen`` (both positive and finite)."""
    sx, sy = (float(v) for v in scale)
    if not (0 < sx < math.inf and 0 < sy < math.inf):
        raise ValueError(f"scale must be two positive finite numbers, got {scale!r}")
    return [float(v) * (sx if i % 2 == 0 else sy) for i, v in enumerate(coords)]


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < math.inf):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")


def _mapped_score(
    completions: list[Any],
    gt_box: list[Any],
    scale: list[Any],
    parse: Callable[[str], Sequence[float] | None],
    metric: Callable[[list[float], Any], float],
) -> list[float]:
    """The completion-level loop the point/box rewards share: ``metric(to_original(parse(text), scale[i]),
    gt_box[i])`` per completion, 0.0 when ``parse`` finds nothing (``score_each`` turns errors into 0.0)."""

    def score(text: str, i: int) -> float:
        answer = parse(text)
        return 0.0 if answer is None else metric(to_original(answer, scale[i]), gt_box[i])

    return score_each(completions, score)


def point_reward(
    completions: list[Any], gt_box: list[Any], scale: list[Any], alpha: float = 0.5, **_: Any
) -> list[float]:
    """GUI-G² point reward of the parsed point (or predicted box centre) mapped to original pixels."""
    _check_alpha(alpha)
    return _mapped_score(completions, gt_box, scale, parse_point, partial(gaussian_point, alpha=alpha))


def coverage_reward(
    completions: list[Any], gt_box: list[Any], scale: list[Any], alpha: float = 0.5, **_: Any
) -> list[float]:
    """GUI-G² coverage reward of the parsed box mapped to original pixels; 0.0 without a box."""
    _check_alpha(alpha)
    return _mapped_score(completions, gt_box, scale, parse_box, partial(gaussian_coverage, alpha=alpha))


def click_reward(completions: list[Any], gt_box: list[Any], scale: list[Any], **_: Any) -> list[float]:
    """Binary baseline: 1.0 if the parsed point (or box centre), in original pixels, is inside ``gt_box``."""
    return _mapped_score(completions, gt_box, scale, parse_point, click_in_box)


def iou_reward(completions: list[Any], gt_box: list[Any], scale: list[Any], **_: Any) -> list[float]:
    """Baseline: IoU of the parsed box, in original pixels, with ``gt_box``; 0.0 without a box."""
    return _mapped_score(completions, gt_box, scale, parse_box, box_iou)


_FORMAT_CHECKS = {"point": is_exact_point, "box": is_exact_box}


def format_reward(completions: list[Any], answer_format: list[Any], **_: Any) -> list[float]:
    """1.0 when the whole stripped completion is exactly one ``(x, y)`` (``answer_format`` "point") or one
    ``[x1, y1, x2, y2]`` ("box"), numbers non-negative and finite; else 0.0 (also for an unknown format)."""

    def score(text: str, i: int) -> float:
        return 1.0 if _FORMAT_CHECKS[answer_format[i]](text) else 0.0

    return score_each(completions, score)
