"""Video temporal grounding rewards (Temporal-R1, TempSamp-R1): parse a ``start``/``end`` answer in seconds and
score it by temporal IoU against the ground-truth segment.

Parsing (``parse_interval``) looks in the LAST complete ``<answer>...</answer>`` (``rewards.parsing.answer_region``),
else in the whole text, and takes the FIRST interval found there, in any of these forms:

* a range ``12.5 to 20.1``, ``12.5 - 20.1``, ``12.5s to 20.1s``, ``from 12.5 to 20.1 seconds``, ``12.5 and 20.1``
  (separators ``to``, ``until``, ``till``, ``and``, ``-``, en/em dash, ``~``; units ``s``, ``sec(s)``,
  ``second(s)`` after either number);
* a bracketed pair ``[12.5, 20.1]`` or ``(12.5, 20.1)``;
* a mapping ``{"start_time": 12.5, "end_time": 20.1}``, keys ``start``/``end`` or ``start_time``/``end_time``
  in either order, quotes optional, ``:`` or ``=``.

The numbers come back as written, possibly reversed or negative. A bare ``12.5, 20.1`` and clock times
(``0:12``) are not recognised (a clock time is never read as two numbers). As in ``rewards.parsing``, a found
interval is never searched past: ``nan``, ``inf`` or a number too large for a float gives ``None``.

Scoring: ``clamp_interval`` clamps both ends into ``[0, duration]``; a reversed answer (start > end) is invalid
and scores IoU 0; it is NOT swapped, so the policy is not rewarded for writing the ends in the wrong order.
``temporal_iou = |A ∩ B| / |A ∪ B|``, 0 for a zero-length or invalid interval. ``answer_iou`` chains the two; the
rewards and the Charades-STA evaluation (``mmrl.eval.charades``) both score through it.

Completion-level rewards follow TRL's signature ``fn(completions, **fields) -> list[float]`` (fields aligned
with ``completions``; see ``rewards.parsing.score_each``: a malformed item scores 0.0 and nothing raises):

* ``iou_reward``: tIoU of the clamped answer with ``gt_interval``; 0.0 when no interval parses;
* ``format_reward``: 1.0 for exactly ``[<think>...</think>] <answer>interval</answer>`` (see its docstring);
* ``soft_iou_reward``: TempSamp-R1's transform of the IoU reward, ``IoU >= τ → τ + 0.01·ln(IoU − τ + 1)``, else
  ``τ − (e^{α(τ−IoU)} − 1)/(e^α − 1)`` (``tempsamp_transform``). The form and the
  defaults τ = 0.8, α = 1 come from one public reimplementation and are NOT confirmed against the paper. An
  unparsable answer gets the transform of IoU 0 (≈ 0.087 at the defaults), not 0.

Temporal-R1's total reward is ``0.5·tIoU + 0.5·format``; the task sets those weights on the components.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from rewards.parsing import NUMBER, answer_region, completion_text, score_each

Interval = tuple[float, float]

_UNIT = r"(?:\s*(?:seconds?|secs?|s)\b)?"


def _time(name: str) -> str:
    """A number captured as ``name`` and an optional unit, followed by no word character and no ``.``/``:`` and
    digit (so a number is never cut short and a clock time ``0:12`` is never read as numbers)."""
    return rf"(?P<{name}>{NUMBER}){_UNIT}(?!\w|[.:]\d)"


_KEY = r"(?:_time)?[\"']?\s*[:=]\s*[\"']?"
_KEYED = (
    rf"(?<!\w)[\"']?(?P<k1>start|end){_KEY}{_time('v1')}[\"']?\s*,\s*"
    rf"[\"']?(?!(?P=k1))(?P<k2>start|end){_KEY}{_time('v2')}"
)
_BRACKETED = rf"[\[(]\s*{_time('b1')}\s*,\s*{_time('b2')}\s*[\])]"
_RANGE = rf"(?<![\w.])(?<!\d:){_time('r1')}\s*(?:to|until|till|and|-|–|—|~)\s*{_time('r2')}"
_INTERVAL_RE = re.compile(rf"{_KEYED}|{_BRACKETED}|{_RANGE}", re.IGNORECASE)

_TAG = r"</?(?:think|answer)>"
_UNTAGGED = rf"(?:(?!{_TAG}).)*"
_FORMAT_RE = re.compile(
    rf"\s*(?:<think>(?P<think>{_UNTAGGED})</think>\s*)?<answer>(?P<answer>{_UNTAGGED})</answer>\s*", re.DOTALL
)


def _endpoints(match: re.Match[str]) -> tuple[str, str]:
    """The (start, end) number texts of an ``_INTERVAL_RE`` match."""
    if match["k1"] is not None:
        first, second = match["v1"], match["v2"]
        return (first, second) if match["k1"].lower() == "start" else (second, first)
    if match["b1"] is not None:
        return match["b1"], match["b2"]
    return match["r1"], match["r2"]


def parse_interval(text: Any) -> Interval | None:
    """The first ``(start, end)`` in seconds in the answer region of ``text`` (a ``str`` or a TRL conversational
    completion), as written. ``None`` if there is none or if either number is not finite."""
    match = _INTERVAL_RE.search(answer_region(completion_text(text)))
    if match is None:
        return None
    start, end = (float(v) for v in _endpoints(match))
    return (start, end) if math.isfinite(start) and math.isfinite(end) else None


def clamp_interval(interval: Interval, duration: float | None) -> Interval | None:
    """``interval`` with both ends clamped into ``[0, duration]`` (only below at 0 when ``duration`` is ``None``
    or not positive). ``None`` for a reversed (start > end) or non-finite interval: it scores IoU 0, unswapped."""
    start, end = interval
    if not (math.isfinite(start) and math.isfinite(end)) or start > end:
        return None
    top = duration if duration is not None and duration > 0 else math.inf
    return min(max(start, 0.0), top), min(max(end, 0.0), top)


def _valid(interval: Interval) -> bool:
    start, end = interval
    return math.isfinite(start) and math.isfinite(end) and start < end


def temporal_iou(a: Interval, b: Interval) -> float:
    """``|a ∩ b| / |a ∪ b|`` of two ``(start, end)`` intervals; 0.0 if either is zero-length, reversed or not
    finite."""
    if not (_valid(a) and _valid(b)):
        return 0.0
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union


def answer_iou(interval: Interval | None, gt_interval: Sequence[float], duration: float | None) -> float:
    """tIoU of a parsed answer, clamped into ``[0, duration]``, with ``gt_interval = [start, end]``; 0.0 for
    ``None`` (nothing parsed) or a reversed answer."""
    clamped = None if interval is None else clamp_interval(interval, duration)
    return 0.0 if clamped is None else temporal_iou(clamped, (float(gt_interval[0]), float(gt_interval[1])))


def iou_reward(completions: list[Any], gt_interval: list[Any], duration: list[Any], **_: Any) -> list[float]:
    """Temporal-R1's accuracy reward: ``answer_iou`` of the parsed answer with ``gt_interval`` (seconds) in a
    video of ``duration`` seconds; 0.0 when no interval parses or it is reversed."""
    return score_each(completions, lambda text, i: answer_iou(parse_interval(text), gt_interval[i], duration[i]))


def format_reward(completions: list[Any], think: list[Any], **_: Any) -> list[float]:
    """1.0 when the completion is exactly ``<answer>...</answer>`` (lower-case tags, surrounding whitespace
    allowed) optionally preceded by one ``<think>...</think>``, neither holding another tag, the answer holding
    a parsable interval with start <= end; ``think[i]`` True requires the think block, False forbids it and
    ``None`` allows either. Else 0.0."""

    def score(text: str, i: int) -> float:
        match = _FORMAT_RE.fullmatch(text)
        if match is None:
            return 0.0
        interval = parse_interval(match["answer"])
        think_ok = think[i] is None or bool(think[i]) == (match["think"] is not None)
        return float(interval is not None and interval[0] <= interval[1] and think_ok)

    return score_each(completions, score)


def tempsamp_transform(r: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    """TempSamp-R1's non-linear asymmetric soft reward: ``r >= tau -> tau + 0.01 ln(r - tau + 1)`` (compressed
    above the threshold), else ``tau - (exp(alpha (tau - r)) - 1) / (exp(alpha) - 1)`` (stretched below).

    The form and the defaults tau = 0.8, alpha = 1 are those of one public reimplementation of TempSamp-R1; they
    have not been checked against the paper, so both are configurable."""
    high = tau + 0.01 * torch.log((r - tau).clamp(min=0) + 1)
    low = tau - (torch.exp(alpha * (tau - r)) - 1) / math.expm1(alpha)
    return torch.where(r >= tau, high, low)


def soft_iou_reward(
    completions: list[Any], gt_interval: list[Any], duration: list[Any], tau: float = 0.8, alpha: float = 1.0,
    **_: Any,
) -> list[float]:
    """TempSamp-R1's soft reward: ``tempsamp_transform`` of ``iou_reward`` (formula in the module docstring; not
    confirmed against the paper). ``tau`` in [0, 1] and ``alpha`` > 0 are scalar hyperparameters (bind them
    with ``functools.partial``); invalid ones raise ``ValueError`` before any item is scored."""
    if not (isinstance(tau, (int, float)) and 0 <= tau <= 1):
        raise ValueError(f"tau must be a number in [0, 1], got {tau!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < math.inf):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    ious = torch.tensor(iou_reward(completions, gt_interval, duration), dtype=torch.float64)
    return tempsamp_transform(ious, tau, alpha).tolist()


def format_interval(start: float, end: float) -> str:
    """The canonical answer text ``"12.5 to 20.1"`` (one decimal) that the task wraps in ``<answer>`` tags."""
    return f"{start:.1f} to {end:.1f}"
