"""Detection metrics: COCO mAP from pycocotools' own ``COCOeval`` (never re-implemented) and micro F1 counts.

``coco_map`` builds the ground truth and the detections in memory in COCO's format and runs ``COCOeval`` with
its defaults (``iouType="bbox"``, IoU thresholds .50:.05:.95, 100 detections per image, area "all"):
``map`` = AP@[.5:.95], ``map50`` = AP@.5, ``map75`` = AP@.75 (``COCOeval.stats[0:3]``). Detections without a
score count with score 1.0; pycocotools sorts them with a stable sort, so ties keep the order given. A detection
whose label names no category is left out (the F1 counts keep it as a false positive). pycocotools reports −1
when no category has ground truth; that comes back as ``None``.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from mmrl.errors import DataError


@dataclass(frozen=True)
class GroundTruthImage:
    """One image of the ground truth: size and boxes ``[x1, y1, x2, y2]`` (original pixels) with labels."""

    id: int
    width: int
    height: int
    boxes: Sequence[Sequence[float]]
    labels: Sequence[str]
    crowd_boxes: Sequence[Sequence[float]] = ()
    crowd_labels: Sequence[str] = ()


@dataclass(frozen=True)
class ScoredBox:
    """One detection: image id, label, ``[x1, y1, x2, y2]`` in original pixels and confidence (``None``: 1.0)."""

    image_id: int
    label: str
    box: Sequence[float]
    score: float | None = None


def _xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _annotations(images: Sequence[GroundTruthImage], ids: dict[str, int]) -> list[dict]:
    out = []
    for image in images:
        for crowd, boxes, labels in ((0, image.boxes, image.labels), (1, image.crowd_boxes, image.crowd_labels)):
            for box, label in zip(boxes, labels):
                xywh = _xywh(box)
                out.append({"id": len(out) + 1, "image_id": image.id, "category_id": ids[label], "bbox": xywh,
                            "area": xywh[2] * xywh[3], "iscrowd": crowd})
    return out


def coco_map(images: Sequence[GroundTruthImage], categories: Sequence[str], detections: Sequence[ScoredBox]
             ) -> dict[str, float | None]:
    """``{"map", "map50", "map75"}`` of ``detections`` against ``images`` by pycocotools' ``COCOeval``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {name: i + 1 for i, name in enumerate(categories)}
    unknown = {label for image in images for label in [*image.labels, *image.crowd_labels]} - set(ids)
    if unknown:
        raise DataError(f"ground-truth labels outside the category list: {sorted(unknown)}")
    gt_dict = {
        "images": [{"id": im.id, "width": im.width, "height": im.height} for im in images],
        "annotations": _annotations(images, ids),
        "categories": [{"id": i, "name": name} for name, i in ids.items()],
    }
    results = [{"image_id": d.image_id, "category_id": ids[d.label], "bbox": _xywh(d.box),
                "score": 1.0 if d.score is None else float(d.score)} for d in detections if d.label in ids]
    if not results or not gt_dict["annotations"]:  # COCOeval needs both; no ground truth leaves AP undefined
        return dict.fromkeys(("map", "map50", "map75"), 0.0 if gt_dict["annotations"] else None)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its table
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:3]]
    return {k: (None if v < 0 else v) for k, v in zip(("map", "map50", "map75"), stats)}


def f1_summary(tp: int, n_pred: int, n_gt: int, threshold: float = 0.5) -> dict[str, float]:
    """Micro precision, recall and F1 at IoU ``threshold`` from dataset totals: ``P = TP/predictions``,
    ``R = TP/ground truth``, ``F1 = 2PR/(P + R)`` (0 when undefined)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {f"precision@{threshold:g}": precision, f"recall@{threshold:g}": recall, f"f1@{threshold:g}": f1}
