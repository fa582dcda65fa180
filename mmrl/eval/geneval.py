"""GenEval (Ghosh et al. 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment"):
``mmrl eval geneval IMAGES_DIR``, scored in process.

**Image layout** (the official one; ``mmrl diffusion sample`` writes it): one folder per prompt, named by digits::

    IMAGES_DIR/00000/metadata.jsonl     one JSON object: the prompt's row of evaluation_metadata.jsonl
    IMAGES_DIR/00000/samples/0000.png   its images (4 per prompt in the paper), 0001.png, ...

A metadata row is ``{"tag", "prompt", "include": [{"class", "count", "color"?, "position"?: [relation, k]}],
"exclude"?: [{"class", "count"}]}``; the six tags are single_object, two_object, counting, colors, position and
color_attr.

**Detections** come from a detector (``mmrl.plugins.GENEVAL_DETECTORS``, see ``Detector``) as dicts
``{"class": str, "box": [x1, y1, x2, y2], "score": float, "color": str | None}``, unthresholded and in any order;
``color`` is what the colour classifier assigned to that object (``None``: not classified).

**Judging** (``judge``), the rules of the official ``evaluation/evaluate_images.py`` (djghosh13/geneval):

* per class, keep the detections with score > 0.3 (> 0.9 when the tag is ``counting``), most confident first,
  at most 16 of them; no non-maximum suppression (the official default overlap threshold, 1.0, disables it);
* each ``include`` clause: ``found`` = the ``count`` most confident kept objects of its class; wrong if there are
  fewer than ``count``. With ``color``, wrong if fewer than ``count`` of ``found`` have that colour. With
  ``position: [relation, k]``, checked only when the clause matched so far: wrong if clause ``k`` did not match
  ("no target"), and wrong unless every found object is in ``relation`` to every object found by clause ``k``
  (``relative_position``);
* each ``exclude`` clause ``{class, count}``: wrong if at least ``count`` objects of the class were kept (a
  counting prompt for N is include N plus exclude N+1, so the count is exact);
* the image is correct when nothing was wrong; the reason lists what was wrong, one line per clause, worded as
  the official script words it.

**Scores** (``summarize``, as the official ``summary_scores.py``): accuracy per tag, the overall score = mean of
the accuracies of the tags present, % correct images, and % correct prompts (a prompt is correct if any of its
images is).

Departures, all outside the official rules' reach on real data: detections of equal score keep the detector's
order (the official ``np.argsort(...)[::-1]`` leaves ties unspecified); image files must match ``\\d+\\.png``
entirely (the official ``re.match`` only checks the start) and a prompt folder without images is an error; a
position reason with no relation at all reads "found no relation to target" (the official joins an empty set);
prompts are grouped by their text (the official groups by the whole metadata row; GenEval's 553 prompts are
distinct).
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps
from tqdm.auto import tqdm

from mmrl.config import parse_key_values
from mmrl.errors import DataError, MMRLError
from mmrl.eval import predictions
from mmrl.eval.records import bad_field, get_field, get_numbers, get_str, is_number, json_rows
from mmrl.plugins import GENEVAL_DETECTORS

PROMPTS_FILE = "geneval/evaluation_metadata.jsonl"
"""GenEval's 553 prompts and their metadata, shipped in ``data/`` (``mmrl.config.shipped_data``)."""
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
"""GenEval's six tags, in the paper's order (the table's order; other tags follow, sorted)."""
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
"""The colours GenEval's CLIP classifier chooses from (and the order reasons list them in)."""
RELATIONS = ("left of", "right of", "above", "below")
"""The position relations, image y growing downwards."""
SCORE_THRESHOLD = 0.3
"""A detection counts when its score is above this..."""
COUNTING_THRESHOLD = 0.9
"""...or above this when the prompt's tag is ``counting``."""
MAX_PER_CLASS = 16
"""At most this many detections per class are kept (the most confident)."""
POSITION_MARGIN = 0.1
"""Fraction of the two objects' summed sizes removed from their centre offset (``relative_position``)."""

Detection = dict[str, Any]
"""``{"class": str, "box": [x1, y1, x2, y2], "score": float, "color": str | None}``."""


# ---------------------------------------------------------------------------------------------------- judging

def relative_position(box_a: list[float], box_b: list[float]) -> tuple[str, ...]:
    """The relations (``RELATIONS`` order) of box A to box B, ``[x1, y1, x2, y2]`` in image pixels (y down).

    Per axis: centre offset ``o = c_A - c_B``, size sum ``s = |w_A| + |w_B|`` (heights for y),
    ``r = max(|o| - 0.1·s, 0)·sign(o)``. No relation if ``|r| < 1e-3`` on both axes; else ``(dx, dy) = r / ‖o‖``
    and A is "left of" B if ``dx < -0.5``, "right of" if ``dx > 0.5``, "above" if ``dy < -0.5``, "below" if
    ``dy > 0.5``. So along one axis A must be off by more than ``0.2·s`` (twice the margin) to be in relation.
    """
    offset = [(box_a[i] + box_a[i + 2] - box_b[i] - box_b[i + 2]) / 2 for i in (0, 1)]
    size = [abs(box_a[i + 2] - box_a[i]) + abs(box_b[i + 2] - box_b[i]) for i in (0, 1)]
    revised = [math.copysign(max(abs(o) - POSITION_MARGIN * s, 0.0), o) for o, s in zip(offset, size)]
    if all(abs(r) < 1e-3 for r in revised):
        return ()
    norm = math.hypot(*offset)
    dx, dy = (r / norm for r in revised)
    held = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return tuple(relation for relation in RELATIONS if held[relation])


def kept_detections(detections: list[Detection], tag: str) -> dict[str, list[Detection]]:
    """``{class: detections}`` that GenEval counts: score above ``SCORE_THRESHOLD`` (``COUNTING_THRESHOLD`` for the
    ``counting`` tag), sorted by descending score (ties keep their input order), at most ``MAX_PER_CLASS`` per
    class. A detector may call it to classify the colour of only the objects ``judge`` reads."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else SCORE_THRESHOLD
    kept: dict[str, list[Detection]] = {}
    for det in sorted((d for d in detections if d["score"] > threshold), key=lambda d: d["score"], reverse=True):
        objects = kept.setdefault(det["class"], [])
        if len(objects) < MAX_PER_CLASS:
            objects.append(det)
    return kept


def _colour_tally(colours: list[str | None]) -> str:
    """``"2 red, 1 blue"``: the count of each colour present, ``COLOURS`` first in their order, then any other name
    in order of appearance, then the objects left unclassified."""
    named = [c for c in colours if c is not None]
    order = [c for c in COLOURS if c in named] + [c for c in dict.fromkeys(named) if c not in COLOURS]
    parts = [f"{named.count(c)} {c}" for c in order]
    unclassified = len(colours) - len(named)
    return ", ".join(parts + ([f"{unclassified} unclassified"] if unclassified else []))


def _match_include(clause: dict[str, Any], kept: dict[str, list[Detection]],
                   groups: list[list[Detection] | None]) -> tuple[list[Detection] | None, str]:
    """``(found, "")`` when the include ``clause`` holds, else ``(None, reason)``; ``groups`` holds what the earlier
    clauses found (``None`` for a clause that failed), the targets of a position."""
    name, count = clause["class"], clause["count"]
    found = kept.get(name, [])[:count]
    if len(found) < count:
        return None, f"expected {name}>={count}, found {len(found)}"
    if "color" in clause:
        want = clause["color"]
        colours = [d.get("color") for d in found]
        if colours.count(want) < count:
            return None, (f"expected {want} {name}>={count}, found {colours.count(want)} {want}; and "
                          f"{_colour_tally(colours)}")
    if "position" in clause:
        relation, k = clause["position"]
        targets = groups[k]
        if targets is None:
            return None, f"no target for {name} to be {relation}"
        for obj in found:
            for target in targets:
                actual = relative_position(obj["box"], target["box"])
                if relation not in actual:
                    seen = " and ".join(actual) or "no relation to"
                    return None, f"expected {name} {relation} target, found {seen} target"
    return found, ""


def clause_reasons(metadata: dict[str, Any], detections: list[Detection]) -> tuple[list[str], list[str]]:
    """What ``judge`` finds wrong with each clause of ``metadata``: ``(include, exclude)``, one reason per clause in
    order, ``""`` where the clause holds (an include clause holds when its objects are found with their colour
    and position; an exclude clause when fewer than its ``count`` objects were kept)."""
    kept = kept_detections(detections, metadata["tag"])
    include: list[str] = []
    groups: list[list[Detection] | None] = []
    for clause in metadata.get("include", []):
        found, reason = _match_include(clause, kept, groups)
        groups.append(found)
        include.append(reason)
    exclude = []
    for clause in metadata.get("exclude", []):
        name, count = clause["class"], clause["count"]
        n = len(kept.get(name, []))
        exclude.append(f"expected {name}<{count}, found {n}" if n >= count else "")
    return include, exclude


def judge(metadata: dict[str, Any], detections: list[Detection]) -> tuple[bool, str]:
    """``(correct, reason)`` of one image: GenEval's rules (module docstring) applied to the raw ``detections`` of
    a detector for the prompt ``metadata`` (a row of evaluation_metadata.jsonl, as ``check_metadata`` accepts).
    ``reason`` is ``""`` when correct, else one line per failed clause (``clause_reasons``), e.g. ``expected
    clock>=2, found 1`` or ``expected clock<3, found 3``."""
    include, exclude = clause_reasons(metadata, detections)
    reasons = [r for r in include + exclude if r]
    return not reasons, "\n".join(reasons)


# ---------------------------------------------------------------------------------------------------- scores

def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The scores of per-image rows ``{"tag", "prompt", "correct", ...}`` (at least one): ``tags`` =
    ``{tag: {"accuracy", "correct", "images"}}`` (``TAGS`` order, then other tags sorted), ``overall`` = mean of
    those accuracies, ``correct_images`` = correct / images, ``correct_prompts`` = share of prompts with at least
    one correct image, and the counts ``images`` and ``prompts``. Accuracies are fractions in [0, 1]."""
    if not rows:
        raise ValueError("summarize needs at least one row")
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for row in rows:
        by_tag.setdefault(row["tag"], []).append(row["correct"])
        by_prompt[row["prompt"]] = by_prompt.get(row["prompt"], False) or row["correct"]
    order = [t for t in TAGS if t in by_tag] + sorted(set(by_tag) - set(TAGS))
    tags = {t: {"accuracy": sum(by_tag[t]) / len(by_tag[t]), "correct": sum(by_tag[t]), "images": len(by_tag[t])}
            for t in order}
    return {
        "overall": statistics.fmean(t["accuracy"] for t in tags.values()),
        "tags": tags,
        "correct_images": sum(r["correct"] for r in rows) / len(rows),
        "correct_prompts": sum(by_prompt.values()) / len(by_prompt),
        "images": len(rows),
        "prompts": len(by_prompt),
    }


def format_table(summary: dict[str, Any]) -> str:
    """The scores as the official summary prints them: percentages with ``(correct / total)``, and the overall
    score as a fraction."""
    n_correct = round(summary["correct_images"] * summary["images"])
    p_correct = round(summary["correct_prompts"] * summary["prompts"])
    lines = [f"{tag:<16} {t['accuracy']:8.2%}  ({t['correct']} / {t['images']})" for tag, t in summary["tags"].items()]
    lines += [
        f"{'overall':<16} {summary['overall']:8.5f}  (mean over {len(summary['tags'])} tags)",
        f"{'correct images':<16} {summary['correct_images']:8.2%}  ({n_correct} / {summary['images']})",
        f"{'correct prompts':<16} {summary['correct_prompts']:8.2%}  ({p_correct} / {summary['prompts']})",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the layout

def _clause(raw: Any, where: str, include: bool, index: int) -> dict[str, Any]:
    """One include (``index`` = its position) or exclude clause, checked; ``DataError`` naming ``where``."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    get_str(raw, "class", where)
    count = get_field(raw, "count", where)
    if not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise bad_field(where, "count", "a positive integer", count)
    if not include:
        return raw
    if "color" in raw and raw["color"] not in COLOURS:
        raise bad_field(where, "color", f"one of {', '.join(COLOURS)}", raw["color"])
    if "position" in raw:
        position = raw["position"]
        if not (isinstance(position, list) and len(position) == 2 and position[0] in RELATIONS
                and isinstance(position[1], int) and not isinstance(position[1], bool) and 0 <= position[1] < index):
            raise bad_field(where, "position", f"[relation, k] with a relation in {', '.join(RELATIONS)} and k the "
                            f"index of an earlier include clause (0..{index - 1})", position)
    return raw


def check_metadata(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """``raw`` if it is a GenEval metadata row ``{"tag", "prompt", "include"?, "exclude"?}`` (clauses as in the
    module docstring; a colour among ``COLOURS``; a position naming an earlier include clause), else ``DataError``
    naming ``where`` and the clause, e.g. ``00003/metadata.jsonl:1: include[1]: missing field 'count'``."""
    get_str(raw, "tag", where)
    get_str(raw, "prompt", where)
    for key in ("include", "exclude"):
        clauses = raw.get(key, [])
        if not isinstance(clauses, list):
            raise bad_field(where, key, "a list of clauses", clauses)
        for i, clause in enumerate(clauses):
            _clause(clause, f"{where}: {key}[{i}]", key == "include", i)
    return raw


def read_metadata(path: Path) -> dict[str, Any]:
    """The one metadata row in ``path`` (blank lines ignored), checked (``check_metadata``); ``DataError`` naming
    the file when it is missing, unreadable or empty, and ``PATH:LINE`` for invalid JSON, a second row or a bad
    field."""
    rows = list(json_rows(path, "GenEval metadata"))
    if not rows:
        raise DataError(f"{path}: empty (expected one JSON object: the prompt's metadata)")
    if len(rows) > 1:
        raise DataError(f"{rows[1][0]}: a second JSON object (expected one: the prompt's metadata)")
    return check_metadata(rows[0][1], rows[0][0])


@dataclass(frozen=True)
class GenEvalPrompt:
    """One prompt folder of the layout."""

    folder: Path
    metadata: dict[str, Any]
    images: list[Path]
    """``samples/NNNN.png``, in name order."""


def load_layout(images_dir: str | Path) -> list[GenEvalPrompt]:
    """The prompt folders (names of digits only, in numeric order) of GenEval's layout under ``images_dir``; other
    entries are ignored, as the official script does. ``DataError`` naming the path when the folder is missing or
    holds no prompt folder, or when a prompt folder's metadata is bad (``read_metadata``) or it has no
    ``samples/`` folder or no image in it."""
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError(f"GenEval image folder not found: {root}")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
                     key=lambda p: (int(p.name), p.name))
    if not folders:
        raise DataError(f"{root}: no prompt folders (00000/metadata.jsonl, 00000/samples/0000.png, ...)")
    prompts = []
    for folder in folders:
        metadata = read_metadata(folder / "metadata.jsonl")
        samples = folder / "samples"
        if not samples.is_dir():
            raise DataError(f"{folder}: no samples/ folder of images")
        images = sorted(p for p in samples.iterdir() if p.is_file() and re.fullmatch(r"\d+\.png", p.name))
        if not images:
            raise DataError(f"{samples}: no images (0000.png, 0001.png, ...)")
        prompts.append(GenEvalPrompt(folder, metadata, images))
    return prompts


def open_image(path: Path) -> Image.Image:
    """The image at ``path`` decoded in full, EXIF orientation applied (as the official script reads it), in RGB,
    with ``filename`` set to ``str(path)``; ``DataError`` naming the file when it is missing or corrupt."""
    try:
        with Image.open(path) as raw:
            image = ImageOps.exif_transpose(raw).convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image: {' '.join(str(exc).split()) or type(exc).__name__}") from exc
    image.filename = str(path)
    return image


# ---------------------------------------------------------------------------------------------------- detectors

class Detector(Protocol):
    """What a ``GENEVAL_DETECTORS`` entry builds (``cls(**args)``, args from ``--detector-arg``).

    ``detect(images, metadata)`` gets a batch of RGB images (``open_image``: ``image.filename`` is the file) and
    each image's metadata row, and returns one list of detections per image: every object it found, unthresholded,
    ``{"class": a GenEval object name, "box": [x1, y1, x2, y2] in pixels, "score": float, "color": str | None}``.
    ``color`` is the object's colour among ``COLOURS`` (GenEval: zero-shot CLIP on the box crop with the pixels
    outside the object's mask painted grey), or ``None`` where the detector did not classify it; ``judge`` reads
    it only for the most confident ``count`` objects of a clause with a colour (``kept_detections`` tells which),
    so a detector may classify only those. ``close()`` frees the models."""

    def detect(self, images: list[Image.Image], metadata: list[dict[str, Any]]) -> list[list[Detection]]: ...

    def close(self) -> None: ...


def check_detections(raw: Any, where: str) -> list[Detection]:
    """A detector's detections of one image, checked and normalised (numbers as floats, ``color`` ``None`` when
    absent); ``DataError`` naming ``where`` and the detection's index for anything malformed."""
    if not isinstance(raw, list):
        raise DataError(f"{where}: expected a list of detections, got {type(raw).__name__}")
    checked = []
    for i, det in enumerate(raw):
        at = f"{where}: detection {i}"
        if not isinstance(det, dict):
            raise DataError(f"{at}: expected a JSON object, got {type(det).__name__}")
        score = get_field(det, "score", at)
        if not is_number(score):
            raise bad_field(at, "score", "a finite number", score)
        colour = det.get("color")
        if colour is not None and not isinstance(colour, str):
            raise bad_field(at, "color", "a string or null", colour)
        checked.append({"class": get_str(det, "class", at), "box": get_numbers(det, "box", at, 4),
                        "score": float(score), "color": colour})
    return checked


def evaluate(prompts: list[GenEvalPrompt], detector: Detector, progress: bool = True) -> list[dict[str, Any]]:
    """Per-image rows ``{"filename", "tag", "prompt", "correct", "reason"}`` (the official results' fields): each
    prompt folder's images go to ``detector.detect`` in one batch and each image's detections to ``judge``."""
    rows = []
    with tqdm(total=sum(len(p.images) for p in prompts), desc="geneval", unit="image", disable=not progress) as bar:
        for prompt in prompts:
            images = [open_image(path) for path in prompt.images]
            found = detector.detect(images, [prompt.metadata] * len(images))
            if not isinstance(found, list) or len(found) != len(prompt.images):
                got = len(found) if isinstance(found, list) else type(found).__name__
                raise MMRLError(f"{prompt.folder}: the detector returned {got} detection lists for "
                                f"{len(prompt.images)} images")
            for path, raw in zip(prompt.images, found):
                correct, reason = judge(prompt.metadata, check_detections(raw, f"detections of {path}"))
                rows.append({"filename": str(path), "tag": prompt.metadata["tag"], "prompt": prompt.metadata["prompt"],
                             "correct": correct, "reason": reason})
            bar.update(len(prompt.images))
    return rows


# ---------------------------------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mmrl eval geneval``."""
    parser.description = (
        "GenEval: detect the objects in each generated image and judge it against its prompt's metadata "
        "(objects, counts, colours, positions), as the official evaluate_images.py does; prints the accuracy per "
        "tag, the overall score (mean of the tag accuracies), % correct images and % correct prompts.")
    parser.add_argument("images_dir", help="the official layout: 00000/metadata.jsonl, 00000/samples/0000.png, ...")
    parser.add_argument("--detector", default="mask2former",
                        help="object detector and colour classifier (mmrl list: GenEval detector; default "
                             "mask2former, GenEval's: Mask2Former and CLIP, settings path, clip_model, "
                             "clip_pretrained, device)")
    parser.add_argument("--detector-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a detector setting, e.g. device=cuda:1 (repeatable)")
    parser.add_argument("--output", help="write the scores JSON to this file")
    parser.add_argument("--per-sample", help='write {"filename", "tag", "prompt", "correct", "reason"} rows here')
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """``mmrl eval geneval``: check the detector name and settings, read the layout, detect and judge every image,
    print the table, write ``--output`` (the scores and the detector's name) and ``--per-sample``; returns 0."""
    build = GENEVAL_DETECTORS.bind(args.detector, parse_key_values(args.detector_arg, "--detector-arg"), "detector")
    prompts = load_layout(args.images_dir)
    detector = build()
    try:
        rows = evaluate(prompts, detector, progress=not args.quiet)
    finally:
        detector.close()
    summary = summarize(rows)
    return predictions.report(args, format_table(summary), {"detector": args.detector, **summary}, rows)
