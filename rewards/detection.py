"""Detection and referring-expression rewards (Vision-R1, DIP-R1, VLM-R1): parse a JSON list of boxes, match it to
the ground truth one to one, and score the match.

Output format (Qwen2.5-VL's grounding format)::

    [{"bbox_2d": [x1, y1, x2, y2], "label": "circle"}, {"bbox_2d": [...], "label": "square", "score": 0.9}]

``parse_detections`` reads it from the LAST complete ``<answer>...</answer>`` (``rewards.parsing.answer_region``),
else from the whole text; a Markdown code fence (```` ```json ... ``` ````) around it is skipped, text around the
JSON value is tolerated for the boxes (but makes the output not well formed), and a single object ``{...}``
counts as a list of one. Coordinates are in the model family's
answer units; rewards map them to original pixels with the per-sample ``scale`` (``rewards.gui.to_original``).

Vision-R1 (Zhan et al. 2025, "Vision-R1: Evolving Human-Free Alignment in Large Vision-Language Models via
Vision-Guided Reinforcement Learning"; code ``vision_r1/visionr1_qwen.py``):

* one-to-one matching by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the cost
  ``C[i, j] = ‖p_i − g_j‖₁ + 1[label_i ≠ label_j] − GIoU(p_i, g_j)`` (L1 in original pixels, unnormalised, as
  the reference code does);
* precision reward ``(1/M) Σ_{matched (i, j)} f(IoU(p_i, g_j))`` over the ``M = min(P, G)`` Hungarian pairs (a pair
  whose labels differ counts 0), with the threshold map ``f(u) = 0 if u < lo, 1 if u > hi, else u``, as the
  reference code computes it. An unmatched (e.g. duplicate) prediction does not lower it, so neither Vision-R1
  reward punishes extra boxes (the F1 counts and DIP-R1's reward do). Dividing by P instead was tried on the tiny
  main job: it paid the policy to drop every box it was unsure of, down to one box per image;
* recall reward ``(number of matched same-label pairs with IoU ≥ hit) / G``. (The reference code scores the
  matched pairs by their GIoU and passes the recall ratio through the threshold map as well; mmrl uses the IoU and
  the plain ratio.)
* progressive rule refinement: ``(lo, hi, hit) = (0.5, 0.75, 0.5)`` before the switch step (1,500 in the paper),
  ``(0.75, 0.9, 0.75)`` from it on (``stage_thresholds``; both triples are the ``stages`` parameter). The trainer
  passes ``step`` and ``total_steps`` in the reward fields; without them (evaluation, ``mmrl select``) the first
  stage applies;
* dual format reward: 1 when the output is well formed (``parse_detections``) and is the empty list exactly when
  the image has no objects.

Empty cases of the two accuracy rewards: no predictions and no ground truth is a perfect answer (1.0); boxes on an
image without objects, or no boxes on an image with objects, score 0.0. The accuracy rewards score the valid boxes an
output holds (none when it holds no JSON, so text without JSON on an image without objects scores 1.0, as in the
reference code); the dual format reward is the one that punishes malformed output.

DIP-R1 (Park et al. 2025, "DIP-R1: Deep Inspection and Perception with RL Looking Through and Understanding Complex
Scenes"): ``dip_accuracy_reward = w·precision + (1 − w)·recall`` of the one-to-one count matching at IoU ≥ τ
(``precision = TP/P``, ``recall = TP/G``; ``w = 0.5``, ``τ = 0.5`` by default; the paper's weights could not be
checked here, so both are parameters), and ``dip_format_reward`` for ``<think>…</think><look>…</look><answer>…
</answer>`` (reason, observe, decide).

REC (VLM-R1; one box per expression): ``rec_iou_reward`` is the IoU of the first predicted box with ``gt_box`` (a
JSON detection or a bare ``[x1, y1, x2, y2]``); accuracy is IoU > 0.5.

Completion-level rewards follow TRL's signature ``fn(completions, **fields) -> list[float]``; a malformed item
scores 0.0 and nothing raises on model output (``rewards.parsing.score_each``). Fields: ``gt_boxes`` (the image's
boxes ``[x1, y1, x2, y2]`` in original pixels), ``gt_labels`` (their category names), ``scale`` (``[sx, sy]``,
original pixels per answer unit), and for REC ``gt_box``.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from rewards.gui import box_iou, to_original
from rewards.parsing import answer_region, parse_box, score_each

Box = Sequence[float]

STAGES = ((0.5, 0.75, 0.5), (0.75, 0.9, 0.75))
"""Vision-R1's progressive rule refinement: ``(lo, hi, hit)`` before and after the switch step."""
SWITCH_STEP = 1500
"""The paper's switch step."""
COORD_LIMIT = 1e100
"""Parsed coordinates are clamped to ``±COORD_LIMIT``, so that areas and distances stay finite floats (such a box
overlaps nothing real either way)."""
COST_CAP = 1e12
"""Matching costs are clipped to ``±COST_CAP`` (NaN to ``+COST_CAP``): the assignment solver needs finite numbers,
and a box with huge coordinates must still be matchable, as the worst choice."""

MAX_FAILED_OBJECTS = 32
"""Objects that fail to decode before the JSON search of a text gives up (``_json_value``): a model's answer is not
preceded by that many broken objects, and each failed attempt can cost a scan of the whole text."""

_FENCE_RE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_DECODER = json.JSONDecoder()
_FENCE_MARK_RE = re.compile(r"```[A-Za-z0-9_-]*")
_START_RE = re.compile(r"\[(?=\s*[{\]])|\{(?=\s*[\"}])")


@dataclass(frozen=True)
class Detection:
    """One predicted box: corners ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``, a label, an optional
    confidence."""

    box: tuple[float, float, float, float]
    label: str
    score: float | None = None


# -- parsing ---------------------------------------------------------------------------------------------------------
def _json_value(region: str) -> tuple[Any, bool]:
    """``(value, alone)``: the first JSON list of objects (or empty list) or JSON object in ``region`` (inside the
    first code fence if there is one and it holds one, else anywhere in ``region``), or ``None``; ``alone`` says
    whether it is all its container holds (the fence's content, else the region), whitespace aside.

    Decoding starts only where such a value can start (``[{``, ``[]``, ``{"`` or ``{}``, spaces allowed), so a
    bracketed number (``step [1]``) or a LaTeX group (``\\frac{a}{b}``) is passed over. A list that starts but does
    not decode (a completion cut off by the token limit) ends the search: its first objects are not an answer, or
    truncation would pay. So does the ``MAX_FAILED_OBJECTS``-th object that does not decode: each failed attempt may
    scan the rest of the text (deep nesting, ``{"a":{"a":...``), and without the cap 200 KB of such garbage took
    seconds; with it the search costs at most that many scans."""
    fenced = _FENCE_RE.search(region)
    for text in (fenced.group(1), region) if fenced else (region,):  # a fence without JSON: the whole region
        failed = 0
        for match in _START_RE.finditer(text):
            try:
                value, end = _DECODER.raw_decode(text, match.start())
            except (ValueError, RecursionError):
                if text[match.start()] == "[":
                    break  # a list that does not decode (cut off by the token limit): no object inside it counts
                failed += 1
                if failed >= MAX_FAILED_OBJECTS:
                    break
                continue
            if isinstance(value, (list, dict)):
                return value, not _FENCE_MARK_RE.sub("", text[: match.start()] + text[end:]).strip()
    return None, False


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return x if math.isfinite(x) else None


def _coordinate(value: Any) -> float | None:
    """A finite number clamped to ``±COORD_LIMIT``, else ``None``."""
    x = _finite_number(value)
    return None if x is None else min(max(x, -COORD_LIMIT), COORD_LIMIT)


def _detection(item: Any) -> Detection | None:
    """The detection of one list item, or ``None`` if it is not ``{"bbox_2d": [4 finite numbers, x1 <= x2,
    y1 <= y2], "label": str, "score"?: finite number}``."""
    if not isinstance(item, dict) or not isinstance(item.get("label"), str):
        return None
    coords = item.get("bbox_2d")
    if not isinstance(coords, list) or len(coords) != 4:
        return None
    box = [_coordinate(v) for v in coords]
    if any(v is None for v in box) or box[0] > box[2] or box[1] > box[3]:
        return None
    score = None
    if "score" in item:
        score = _finite_number(item["score"])
        if score is None:
            return None
    return Detection((box[0], box[1], box[2], box[3]), item["label"].strip(), score)


def parse_detections(text: Any) -> tuple[list[Detection], bool]:
    """``(detections, well_formed)`` of one model output (see the module docstring for where it looks).

    Well formed: the JSON value is all its fence (or, without a fence, the answer region) holds, and every item is a
    valid detection. Otherwise the valid items are still returned (text around the JSON is tolerated for the boxes;
    an output with no JSON at all has none), but the format is not rewarded: Vision-R1's format check parses the
    whole output as JSON. Never raises."""
    if not isinstance(text, str):
        return [], False
    value, alone = _json_value(answer_region(text))
    if value is None:
        return [], False
    items = value if isinstance(value, list) else [value]
    found = [_detection(item) for item in items]
    detections = [d for d in found if d is not None]
    return detections, alone and len(detections) == len(items)


# -- geometry and matching -------------------------------------------------------------------------------------------
def giou(a: Box, b: Box) -> float:
    """Generalised IoU (Rezatofighi et al. 2019): ``IoU − (|C| − |A ∪ B|)/|C|`` with ``C`` the smallest box holding
    both; in [−1, 1]. A zero union or hull makes its term 0."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    iou = inter / union if union > 0 else 0.0
    penalty = (hull - union) / hull if hull > 0 else 0.0
    value = iou - penalty
    return value if math.isfinite(value) else 0.0


def iou_matrix(pred: Sequence[Box], gt: Sequence[Box]) -> np.ndarray:
    """``[P, G]`` IoUs (``rewards.gui.box_iou``: 0 for a zero union; NaN from overflow becomes 0)."""
    out = np.array([[box_iou(p, g) for g in gt] for p in pred], dtype=np.float64).reshape(len(pred), len(gt))
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _solve(cost: np.ndarray) -> list[tuple[int, int]]:
    """The minimum-cost one-to-one assignment of a ``[P, G]`` cost matrix (``min(P, G)`` pairs)."""
    if cost.size == 0:
        return []
    safe = np.clip(np.nan_to_num(cost, nan=COST_CAP, posinf=COST_CAP, neginf=-COST_CAP), -COST_CAP, COST_CAP)
    rows, cols = linear_sum_assignment(safe)
    return [(int(i), int(j)) for i, j in zip(rows, cols)]


def hungarian_match(pred: Sequence[Detection], gt_boxes: Sequence[Box], gt_labels: Sequence[str]
                    ) -> list[tuple[int, int]]:
    """Vision-R1's one-to-one matching: ``(prediction index, ground-truth index)`` pairs minimising
    ``Σ ‖p − g‖₁ + 1[label ≠] − GIoU`` (``min(P, G)`` pairs)."""
    if len(gt_labels) != len(gt_boxes):  # else some costs would be left uninitialised (np.empty)
        raise ValueError(f"{len(gt_boxes)} ground-truth boxes but {len(gt_labels)} labels")
    cost = np.empty((len(pred), len(gt_boxes)), dtype=np.float64)
    with np.errstate(all="ignore"):
        for i, p in enumerate(pred):
            for j, (g, label) in enumerate(zip(gt_boxes, gt_labels)):
                l1 = sum(abs(float(u) - float(v)) for u, v in zip(p.box, g))
                cost[i, j] = l1 + (p.label != label) - giou(p.box, g)
    return _solve(cost)


def count_matches(pred: Sequence[Detection], gt_boxes: Sequence[Box], gt_labels: Sequence[str],
                  threshold: float = 0.5) -> int:
    """True positives of the F1 counts: the largest number of one-to-one pairs of the same label with
    IoU ≥ ``threshold`` (a maximum bipartite matching, solved as an assignment with cost −1 per valid pair)."""
    ious = iou_matrix([p.box for p in pred], gt_boxes)
    same = np.array([[p.label == label for label in gt_labels] for p in pred], dtype=bool).reshape(ious.shape)
    valid = (ious >= threshold) & same
    return int(sum(valid[i, j] for i, j in _solve(-valid.astype(np.float64))))


# -- Vision-R1 -------------------------------------------------------------------------------------------------------
def stage_thresholds(step: int | None, total_steps: int | None = None, switch_step: int = SWITCH_STEP,
                     switch_fraction: float | None = None, stages: Sequence[Sequence[float]] = STAGES
                     ) -> tuple[float, float, float]:
    """``(lo, hi, hit)`` of Vision-R1's progressive schedule at ``step``: the second stage from the switch on. The
    switch is ``switch_fraction · total_steps`` when both are given, else ``switch_step``; no ``step`` (outside
    training) is the first stage. ``stages``: the two ``(lo, hi, hit)`` triples (default: the paper's ``STAGES``)."""
    if step is None:
        return tuple(stages[0])
    switch = switch_fraction * total_steps if switch_fraction is not None and total_steps else switch_step
    return tuple(stages[1] if step >= switch else stages[0])


def threshold_map(iou: float, lo: float, hi: float) -> float:
    """Vision-R1's IoU map ``f(u) = 0 if u < lo, 1 if u > hi, else u``."""
    return 0.0 if iou < lo else 1.0 if iou > hi else iou


def detections_in_pixels(text: Any, scale: Sequence[float]) -> tuple[list[Detection], bool]:
    """``parse_detections`` of ``text`` with every box mapped to original pixels (``rewards.gui.to_original``: a
    malformed ``scale`` raises)."""
    found, well_formed = parse_detections(text)
    return [Detection(tuple(to_original(d.box, scale)), d.label, d.score) for d in found], well_formed


def _matched_ious(pred: list[Detection], gt_boxes: Sequence[Box], gt_labels: Sequence[str]) -> list[float]:
    """IoU of each Hungarian pair, 0 for a pair whose labels differ."""
    return [box_iou(pred[i].box, gt_boxes[j]) if pred[i].label == gt_labels[j] else 0.0
            for i, j in hungarian_match(pred, gt_boxes, gt_labels)]


def detection_precision(pred: list[Detection], gt_boxes: Sequence[Box], gt_labels: Sequence[str],
                        lo: float = 0.5, hi: float = 0.75) -> float:
    """Vision-R1 precision: the mean of ``f(IoU)`` over the Hungarian pairs (0 for a pair of different labels); 1.0
    when both sides are empty, 0.0 when one side is."""
    if not pred or not len(gt_boxes):
        return float(not pred and not len(gt_boxes))
    ious = _matched_ious(pred, gt_boxes, gt_labels)
    return sum(threshold_map(u, lo, hi) for u in ious) / len(ious)


def detection_recall(pred: list[Detection], gt_boxes: Sequence[Box], gt_labels: Sequence[str],
                     hit: float = 0.5) -> float:
    """Vision-R1 recall: ``(matched same-label pairs with IoU ≥ hit) / G``; 1.0 when both sides are empty, 0.0 for
    boxes on an empty image."""
    if not len(gt_boxes):
        return 0.0 if pred else 1.0
    return sum(u >= hit for u in _matched_ious(pred, gt_boxes, gt_labels)) / len(gt_boxes)


def precision_reward(completions: list[Any], gt_boxes: list[Any], gt_labels: list[Any], scale: list[Any],
                     step: list[Any] | None = None, total_steps: list[Any] | None = None, *,
                     switch_step: int = SWITCH_STEP, switch_fraction: float | None = None,
                     stages: Sequence[Sequence[float]] = STAGES, **_: Any) -> list[float]:
    """Vision-R1 precision reward of each completion with the stage's ``(lo, hi)``."""

    def score(text: str, i: int) -> float:
        lo, hi, _ = stage_thresholds(_at(step, i), _at(total_steps, i), switch_step, switch_fraction, stages)
        return detection_precision(detections_in_pixels(text, scale[i])[0], gt_boxes[i], gt_labels[i], lo, hi)

    return score_each(completions, score)


def recall_reward(completions: list[Any], gt_boxes: list[Any], gt_labels: list[Any], scale: list[Any],
                  step: list[Any] | None = None, total_steps: list[Any] | None = None, *,
                  switch_step: int = SWITCH_STEP, switch_fraction: float | None = None,
                  stages: Sequence[Sequence[float]] = STAGES, **_: Any) -> list[float]:
    """Vision-R1 recall reward of each completion with the stage's ``hit`` threshold."""

    def score(text: str, i: int) -> float:
        _, _, hit = stage_thresholds(_at(step, i), _at(total_steps, i), switch_step, switch_fraction, stages)
        return detection_recall(detections_in_pixels(text, scale[i])[0], gt_boxes[i], gt_labels[i], hit)

    return score_each(completions, score)


def dual_format_reward(completions: list[Any], gt_boxes: list[Any], **_: Any) -> list[float]:
    """Vision-R1's dual format reward: 1.0 for a well-formed output that is empty exactly when the image has no
    objects (an image without objects is answered by ``[]``), else 0.0."""

    def score(text: str, i: int) -> float:
        found, well_formed = parse_detections(text)
        return float(well_formed and (len(found) == 0) == (len(gt_boxes[i]) == 0))

    return score_each(completions, score)


def _at(column: list[Any] | None, i: int) -> Any:
    """Item ``i`` of an optional field column (``None`` when the trainer does not provide the field)."""
    return None if column is None else column[i]


# -- DIP-R1 ----------------------------------------------------------------------------------------------------------
def weighted_precision_recall(pred: list[Detection], gt_boxes: Sequence[Box], gt_labels: Sequence[str],
                              weight: float = 0.5, threshold: float = 0.5) -> float:
    """DIP-R1's accuracy ``w·TP/P + (1 − w)·TP/G`` with ``TP = count_matches(threshold)``; an empty side's ratio is
    1 when both sides are empty and 0 otherwise."""
    tp = count_matches(pred, gt_boxes, gt_labels, threshold)
    both_empty = not pred and not len(gt_boxes)
    precision = tp / len(pred) if pred else float(both_empty)
    recall = tp / len(gt_boxes) if len(gt_boxes) else float(both_empty)
    return weight * precision + (1 - weight) * recall


def dip_accuracy_reward(completions: list[Any], gt_boxes: list[Any], gt_labels: list[Any], scale: list[Any], *,
                        weight: float = 0.5, threshold: float = 0.5, **_: Any) -> list[float]:
    """DIP-R1's weighted precision-recall accuracy reward of each completion (``weighted_precision_recall``)."""
    if not (0 <= weight <= 1 and 0 < threshold <= 1):
        raise ValueError(f"weight must be in [0, 1] and threshold in (0, 1], got {weight!r}, {threshold!r}")

    def score(text: str, i: int) -> float:
        return weighted_precision_recall(detections_in_pixels(text, scale[i])[0], gt_boxes[i], gt_labels[i], weight, threshold)

    return score_each(completions, score)


_DIP_PART = r"(?:(?!</?(?:think|look|answer)>).)+"  # non-empty, holding no tag: one block of each, in order
_DIP_FORMAT_RE = re.compile(
    rf"\s*<think>{_DIP_PART}</think>\s*<look>{_DIP_PART}</look>\s*<answer>{_DIP_PART}</answer>\s*", re.DOTALL
)


def dip_format_reward(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the completion is exactly ``<think>reason</think><look>observe</look><answer>decide</answer>``
    (whitespace between the parts allowed, each part non-empty), else 0.0."""
    return score_each(completions, lambda text, i: float(_DIP_FORMAT_RE.fullmatch(text) is not None))


# -- REC -------------------------------------------------------------------------------------------------------------
def parse_single_box(text: Any) -> list[float] | None:
    """The REC answer: the first well-ordered detection's box, else the first bare ``[x1, y1, x2, y2]``
    (``rewards.parsing.parse_box``), else ``None``."""
    found, _ = parse_detections(text)
    return list(found[0].box) if found else parse_box(text)


def rec_iou_reward(completions: list[Any], gt_box: list[Any], scale: list[Any], **_: Any) -> list[float]:
    """IoU of the answer's box, mapped to original pixels, with ``gt_box``; 0.0 without a box."""

    return score_each(completions, lambda text, i: rec_iou(text, scale[i], gt_box[i]) or 0.0)


def rec_iou(text: Any, scale: Sequence[float], gt_box: Box) -> float | None:
    """IoU of the REC answer's box (``parse_single_box``), mapped to original pixels, with ``gt_box``; ``None`` when
    the output holds no box."""
    box = parse_single_box(text)
    return None if box is None else box_iou(to_original(box, scale), gt_box)


def rec_correct(iou: float) -> bool:
    """REC accuracy criterion: IoU > 0.5."""
    return iou > 0.5
