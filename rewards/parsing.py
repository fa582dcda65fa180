"""Parsers of untrusted model text: points and boxes. Pure, and they never raise on any ``str``; ``score_each`` is
the per-completion loop of the TRL-style rewards built on them.

Where to look: the content of the LAST complete ``<answer>...</answer>`` (tags matched case-insensitively;
for nested tags, the innermost one before the last closing tag); with no complete pair, the whole text.
Inside that region the parsers scan left to right for *coordinate groups*:

* a Qwen box ``(x1, y1), (x2, y2)`` (the comma between the pairs is optional) -> 4 numbers;
* a bracketed list ``[a, b, ...]`` or ``(a, b, ...)`` -> its numbers;
* an ``x``/``y`` mapping ``{"x": 10, "y": 20}``, also ``x=10, y=20`` (pyautogui style) -> 2 numbers;
* a bare comma-separated run ``a, b`` -> its numbers.

A group of 2 numbers is a point and a group of 4 a box; groups of any other length (``step [1]``) are
skipped. Numbers are ASCII decimals with an optional sign, fraction and exponent; ``nan`` and ``inf`` are
recognised so that a group holding them is rejected (``None``) instead of silently skipped. A number too
large for a float becomes ``inf`` and is rejected the same way. A found answer is never searched past:
when the answer region holds no group, the result is ``None``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

NUMBER = r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[-+]?[0-9]+)?|nan|inf(?:inity)?)"
"""An ASCII decimal with an optional sign, fraction and exponent, or ``nan``/``inf`` (match case-insensitively)."""
_NUM_RE = re.compile(NUMBER, re.IGNORECASE)
_SEP = r"\s*,\s*"
_GROUP_RE = re.compile(
    rf"(?P<pair>\(\s*{NUMBER}{_SEP}{NUMBER}\s*\)\s*,?\s*\(\s*{NUMBER}{_SEP}{NUMBER}\s*\))"
    rf"|(?P<seq>[\[(]\s*{NUMBER}(?:{_SEP}{NUMBER})*\s*[\])])"
    rf"|(?P<xy>(?<!\w)[\"']?x[\"']?\s*[:=]\s*{NUMBER}{_SEP}[\"']?y[\"']?\s*[:=]\s*{NUMBER})"
    rf"|(?P<bare>(?<![\w.]){NUMBER}(?:{_SEP}{NUMBER})+)",
    re.IGNORECASE,
)
_OPEN_RE = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE_RE = re.compile(r"</answer>", re.IGNORECASE)

_PLAIN = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_EXACT_POINT_RE = re.compile(rf"\(\s*({_PLAIN}){_SEP}({_PLAIN})\s*\)")
_EXACT_BOX_RE = re.compile(rf"\[\s*({_PLAIN}){_SEP}({_PLAIN}){_SEP}({_PLAIN}){_SEP}({_PLAIN})\s*\]")


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL hands it to a reward: a ``str``, or (conversational format) a list
    of messages whose last ``content`` is a ``str`` or a list of ``{"type": "text", "text": ...}`` parts.
    Anything else is ``""``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def score_each(completions: list[Any], score: Callable[[str, int], float]) -> list[float]:
    """``score(text, i)`` for the text of every completion (TRL's completion-level reward loop); an exception
    or a non-finite value gives 0.0, so untrusted output and malformed per-sample fields never raise."""
    out = []
    for i, completion in enumerate(completions):
        try:
            value = float(score(completion_text(completion), i))
        except Exception:  # noqa: BLE001 - untrusted model output and per-sample fields: score 0, never raise
            value = 0.0
        out.append(value if math.isfinite(value) else 0.0)
    return out


def answer_region(text: str) -> str:
    """The content of the last complete ``<answer>...</answer>``, else ``text`` itself."""
    closes = [m.start() for m in _CLOSE_RE.finditer(text)]
    if not closes:
        return text
    opens = [m.end() for m in _OPEN_RE.finditer(text, 0, closes[-1])]
    if not opens:
        return text
    start = opens[-1]
    end = next(c for c in closes if c >= start)
    return text[start:end]


def _groups(region: str) -> Iterator[list[float]]:
    """Yield the numbers of each coordinate group of 2 or 4 numbers, left to right (may be non-finite)."""
    for match in _GROUP_RE.finditer(region):
        values = [float(v) for v in _NUM_RE.findall(match.group())]
        if len(values) in (2, 4):
            yield values


def _ordered(box: list[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` with ``x1 <= x2`` and ``y1 <= y2``."""
    x1, y1, x2, y2 = box
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def parse_point(text: Any) -> tuple[float, float] | None:
    """The first point in the answer region; a box gives its centre. ``None`` if there is none, if its
    values are not finite, or if ``text`` is not a ``str``."""
    if not isinstance(text, str):
        return None
    for values in _groups(answer_region(text)):
        if not all(math.isfinite(v) for v in values):
            return None
        if len(values) == 4:
            x1, y1, x2, y2 = values
            return ((x1 + x2) / 2, (y1 + y2) / 2)
        return (values[0], values[1])
    return None


def parse_box(text: Any) -> list[float] | None:
    """The first box ``[x1, y1, x2, y2]`` in the answer region (points are skipped), reordered so that
    ``x1 <= x2`` and ``y1 <= y2``. ``None`` if there is none or its values are not finite."""
    if not isinstance(text, str):
        return None
    for values in _groups(answer_region(text)):
        if len(values) == 4:
            return _ordered(values) if all(math.isfinite(v) for v in values) else None
    return None


def _exact(pattern: re.Pattern[str], text: Any) -> bool:
    """Whether the whole stripped ``text`` matches ``pattern`` with finite numbers."""
    if not isinstance(text, str):
        return False
    match = pattern.fullmatch(text.strip())
    return match is not None and all(math.isfinite(float(v)) for v in match.groups())


def is_exact_point(text: Any) -> bool:
    """Whether the stripped text is exactly one point ``(x, y)`` of non-negative finite numbers."""
    return _exact(_EXACT_POINT_RE, text)


def is_exact_box(text: Any) -> bool:
    """Whether the stripped text is exactly one box ``[x1, y1, x2, y2]`` of non-negative finite numbers."""
    return _exact(_EXACT_BOX_RE, text)
