"""Object detection (Vision-R1, DIP-R1) and referring-expression comprehension (VLM-R1) task adapters.

**detection**: given an image and the category list, the model answers with a JSON list of
``{"bbox_2d": [x1, y1, x2, y2], "label": category}`` in its model family's coordinate convention (pixels of the
resized image it saw, or 0-1000 of each side; ``mmrl.eval.screenspot.coord_scale``), and ``[]`` when there is no
object. Rewards map the boxes to original pixels and score them against the ground truth (``rewards.detection``:
Vision-R1 precision, recall and dual format by default; DIP-R1's weighted precision-recall and format available).
Evaluation (``score`` + ``aggregate``) gives COCO ``map``/``map50``/``map75`` (pycocotools) and micro
``precision@0.5``/``recall@0.5``/``f1@0.5``.

**rec**: given an image and a referring expression, the model answers with one box; reward = IoU, evaluation =
``acc@0.5`` (IoU > 0.5) and ``miou``.

Data: COCO instances JSON + image folder (``mmrl.eval.detection_format.load_coco``) and REC JSON lines
(``load_rec``), or the seeded synthetic generator (``tasks.synthetic_detection``), which writes both formats into
the cache.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError, DataError
from mmrl.eval.coco_metrics import GroundTruthImage, ScoredBox, coco_map, f1_summary
from mmrl.eval.detection_format import DetectionRecord, RecRecord, check_image, load_coco, load_rec
from mmrl.eval.records import image_size
from mmrl.eval.screenspot import coord_scale
from mmrl.plugins import TASKS
from mmrl.store import cached_build
from mmrl.task import Task, hf_records
from mmrl.types import LoadContext, Sample
from rewards import detection as det
from tasks import synthetic_detection

UNITS = {
    "resized": "in pixels of the image",
    "absolute": "in pixels of the image",
    "0-1000": "with coordinates from 0 to 1000 across the image",
}
"""How a prompt names each coordinate convention (``LoadContext.coords``)."""

DETECTION_PROMPT = ('Detect every {categories} in the image. Answer with a JSON list of {{"bbox_2d": [x1, y1, x2, '
                    'y2], "label": name}} {units}, or [] if there is none.')
REC_PROMPT = ('Locate "{expression}" in the image. Answer with a JSON list of one {{"bbox_2d": [x1, y1, x2, y2], '
              '"label": name}} {units}.')


@dataclass
class SyntheticDetection:
    """Settings of the synthetic shapes (``tasks.synthetic_detection``)."""

    n_train: int = 4000
    """Training images to generate."""
    n_eval: int = 200
    """Held-out images (generated from seed + 1)."""
    seed: int = 0
    width: int = 64
    height: int = 64
    min_objects: int = 1
    """Fewest objects on an image that is not empty."""
    max_objects: int = 4
    empty_fraction: float = 0.1
    """Share of images with no object (answered by ``[]``)."""
    min_size: int = 10
    max_size: int = 28
    max_overlap: float = 0.3
    """Largest IoU between two objects of an image (crowded, overlapping cases up to it)."""
    shapes: list[str] = field(default_factory=lambda: list(synthetic_detection.SHAPES))
    """Categories drawn: circle, square, triangle."""
    colour_per_shape: bool = False
    """Draw each category in its own colour (circle red, square blue, triangle green) instead of a random one: the
    categories then differ in colour as well as in shape."""


@dataclass
class DetectionData:
    train: str | dict[str, Any] | None = None
    """COCO instances JSON for training, or a Hugging Face ``datasets`` source (a mapping,
    ``mmrl.hf_data.HFSource``: fields image, bboxes, labels, optional id, crowd); unset = synthetic data."""
    eval: str | dict[str, Any] | None = None
    """The same for evaluation; unset = synthetic data."""
    train_images: str | None = None
    """Image folder of ``train`` (default: ``images/`` beside the JSON if it exists, else the JSON's folder)."""
    eval_images: str | None = None
    """Image folder of ``eval`` (same default)."""
    switch_step: int = det.SWITCH_STEP
    """Vision-R1's progressive schedule: the thresholds tighten from this RL step on (1,500 in the paper)."""
    switch_fraction: float | None = None
    """When set, the switch is at this fraction of the run's RL steps instead (overrides ``switch_step``)."""
    stages: list[list[float]] = field(default_factory=lambda: [list(t) for t in det.STAGES])
    """Vision-R1's ``[lo, hi, hit]`` before and after the switch: precision maps a matched IoU below ``lo`` to 0 and
    above ``hi`` to 1; recall counts IoU >= ``hit`` (the paper's ``[[0.5, 0.75, 0.5], [0.75, 0.9, 0.75]]``)."""
    dip_weight: float = 0.5
    """DIP-R1 accuracy reward: weight of precision against recall."""
    prompt: str = DETECTION_PROMPT
    """The question, with ``{categories}`` (comma-separated names) and ``{units}`` (the coordinate convention's
    words) filled in."""
    synthetic: SyntheticDetection = field(default_factory=SyntheticDetection)


@dataclass
class RecData:
    train: str | dict[str, Any] | None = None
    """REC JSON lines for training, or a Hugging Face ``datasets`` source (a mapping, ``mmrl.hf_data.HFSource``:
    fields image, expression, bbox); unset = synthetic data."""
    eval: str | dict[str, Any] | None = None
    """The same for evaluation; unset = synthetic data."""
    train_images: str | None = None
    """Folder the rows' ``image`` paths are relative to (default: the JSONL's folder)."""
    eval_images: str | None = None
    prompt: str = REC_PROMPT
    """The question, with ``{expression}`` and ``{units}`` filled in."""
    synthetic: SyntheticDetection = field(default_factory=SyntheticDetection)


def synthetic_files(cfg: SyntheticDetection, split: str, cache_dir: str) -> Path:
    """Generate (once; cached by a hash of the settings) and return the synthetic COCO file of ``split``; the REC
    rows are ``rec_<split>.jsonl`` beside it."""
    n, seed = (cfg.n_train, cfg.seed) if split == "train" else (cfg.n_eval, cfg.seed + 1)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("n_train", "n_eval", "seed")}
    settings["shapes"] = tuple(settings["shapes"])
    build = partial(synthetic_detection.generate, n=n, seed=seed, split_name=split, **settings)
    return cached_build(cache_dir, f"detection_synthetic-{split}", {**asdict(cfg), "split": split, "version": 1},
                        f"instances_{split}.json", build)


def _scale(coords: str, size: tuple[int, int], ctx: LoadContext) -> list[float]:
    return list(coord_scale(coords, size, ctx.min_pixels, ctx.max_pixels, ctx.factor))


def _answer(boxes: list[list[float]], labels: list[str], scale: list[float]) -> str:
    """The ground-truth completion: boxes in answer units (integers), in reading order (top to bottom, then left to
    right), compact JSON."""
    seen = [[round(v / scale[i % 2]) for i, v in enumerate(box)] for box in boxes]
    items = sorted(zip(seen, labels), key=lambda item: (item[0][1], item[0][0]))
    return json.dumps([{"bbox_2d": box, "label": label} for box, label in items], separators=(",", ":"))


def _fill(template: str, key: str, **values: str) -> str:
    """``template`` with ``values`` filled in; ``ConfigError`` naming ``key`` for a placeholder it does not know."""
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: cannot fill {template!r} ({type(exc).__name__}: {exc}); "
                          f"placeholders: {', '.join('{' + k + '}' for k in values)}") from None


@TASKS.register("detection", config=DetectionData, renderer="detection", benchmarks=("coco",))
class CocoDetection(Task):
    """COCO-format detection; benchmark records are ``(DetectionRecord list, category names)`` pairs."""

    def load(self, split: str, cfg: DetectionData, ctx: LoadContext) -> list[Sample]:
        from_hf = hf_records(split, cfg, ctx, "detection")
        if from_hf is not None:
            return self.samples_from_records(from_hf, cfg, ctx)
        path = cfg.train if split == "train" else cfg.eval
        images = cfg.train_images if split == "train" else cfg.eval_images
        source = Path(path) if path else synthetic_files(cfg.synthetic, split, ctx.cache_dir)
        records, categories = load_coco(source, images)
        if not records:
            raise DataError(f"{source}: no images")
        for record in records:
            check_image(record)
        return self.samples_from_records((records, categories), cfg, ctx)

    def samples_from_records(self, records: tuple[list[DetectionRecord], list[str]], cfg: DetectionData,
                             ctx: LoadContext) -> list[Sample]:
        images, categories = records
        prompt = _fill(cfg.prompt, "data.prompt", categories=", ".join(categories), units=UNITS[ctx.coords])
        samples = []
        for r in images:
            scale = _scale(ctx.coords, (r.width, r.height), ctx)
            samples.append(Sample(
                id=str(r.id), prompt=prompt, images=[r.image], answer=_answer(r.boxes, r.labels, scale),
                fields={"gt_boxes": r.boxes, "gt_labels": r.labels, "scale": scale, "image_id": r.id,
                        "width": r.width, "height": r.height, "crowd_boxes": r.crowd_boxes,
                        "crowd_labels": r.crowd_labels, "categories": categories}))
        return samples

    def reward_functions(self, cfg: DetectionData) -> dict:
        if len(cfg.stages) != 2 or any(len(t) != 3 or not 0 <= t[0] <= t[1] <= 1 or not 0 < t[2] <= 1
                                       for t in cfg.stages):
            raise ConfigError(f"config key 'data.stages': {cfg.stages!r}; expected two [lo, hi, hit] triples with "
                              "0 <= lo <= hi <= 1 and 0 < hit <= 1")
        schedule = dict(switch_step=cfg.switch_step, switch_fraction=cfg.switch_fraction, stages=cfg.stages)
        return {
            "precision": partial(det.precision_reward, **schedule),
            "recall": partial(det.recall_reward, **schedule),
            "format": det.dual_format_reward,
            "dip_accuracy": partial(det.dip_accuracy_reward, weight=cfg.dip_weight),
            "dip_format": det.dip_format_reward,
        }

    def default_rewards(self, cfg: DetectionData) -> dict[str, float]:
        """Vision-R1: precision + recall + dual format, equal weights."""
        return {"precision": 1.0, "recall": 1.0, "format": 1.0}

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        """F1 counts at IoU 0.5 (``tp``, ``n_pred``, ``n_gt``) and ``unparsable`` (the output is not well formed)."""
        pred, well_formed = det.detections_in_pixels(completion, sample.fields["scale"])
        f = sample.fields
        return {"tp": det.count_matches(pred, f["gt_boxes"], f["gt_labels"]), "n_pred": len(pred),
                "n_gt": len(f["gt_boxes"]), "unparsable": float(not well_formed)}

    def aggregate(self, scores: list[dict[str, float]], samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """COCO mAP over the whole set (pycocotools ranks every detection by confidence) and micro F1 at 0.5."""
        totals = {k: sum(s[k] for s in scores) for k in ("tp", "n_pred", "n_gt", "unparsable")}
        ground_truth = [GroundTruthImage(s.fields["image_id"], s.fields["width"], s.fields["height"],
                                         s.fields["gt_boxes"], s.fields["gt_labels"], s.fields["crowd_boxes"],
                                         s.fields["crowd_labels"]) for s in samples]
        detections = [ScoredBox(s.fields["image_id"], d.label, d.box, d.score)
                      for s, text in zip(samples, outputs)
                      for d in det.detections_in_pixels(text, s.fields["scale"])[0]]
        categories = samples[0].fields["categories"] if samples else []
        return {**coco_map(ground_truth, categories, detections),
                **f1_summary(int(totals["tp"]), int(totals["n_pred"]), int(totals["n_gt"])),
                "unparsable": int(totals["unparsable"]), "n": len(scores)}


@TASKS.register("rec", config=RecData, renderer="detection", benchmarks=("rec",))
class ReferringExpressions(Task):
    """Referring-expression comprehension: one box per expression; benchmark records are ``RecRecord``s."""

    def load(self, split: str, cfg: RecData, ctx: LoadContext) -> list[Sample]:
        from_hf = hf_records(split, cfg, ctx, "rec")
        if from_hf is not None:
            return self.samples_from_records(from_hf, cfg, ctx)
        path = cfg.train if split == "train" else cfg.eval
        images = cfg.train_images if split == "train" else cfg.eval_images
        if path:
            source = Path(path)
        else:
            source = synthetic_files(cfg.synthetic, split, ctx.cache_dir).parent / f"rec_{split}.jsonl"
        records = load_rec(source, images)
        if not records:
            raise DataError(f"{source}: no records")
        if ctx.coords == "absolute":  # samples_from_records reads no image header then: check each image here
            for r in {r.image: r for r in records}.values():
                image_size(r.image, f"{r.source_file}:{r.line}")
        return self.samples_from_records(records, cfg, ctx)

    def samples_from_records(self, records: list[RecRecord], cfg: RecData, ctx: LoadContext) -> list[Sample]:
        samples, sizes = [], {}
        for r in records:
            if ctx.coords == "absolute":
                scale = [1.0, 1.0]
            else:
                if r.image not in sizes:
                    sizes[r.image] = image_size(r.image, f"{r.source_file}:{r.line}")
                scale = _scale(ctx.coords, sizes[r.image], ctx)
            samples.append(Sample(
                id=str(r.id), prompt=_fill(cfg.prompt, "data.prompt", expression=r.expression, units=UNITS[ctx.coords]),
                images=[r.image], answer=_answer([r.box], [r.expression], scale),
                fields={"gt_box": r.box, "gt_boxes": [r.box], "gt_labels": [r.expression], "scale": scale,
                        "expression": r.expression}))
        return samples

    def reward_functions(self, cfg: RecData) -> dict:
        return {"iou": det.rec_iou_reward, "format": det.dual_format_reward}

    def default_rewards(self, cfg: RecData) -> dict[str, float]:
        """VLM-R1: IoU + format."""
        return {"iou": 1.0, "format": 1.0}

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        """``acc@0.5`` (IoU > 0.5), ``miou`` (this sample's IoU) and ``unparsable`` (no box found)."""
        iou = det.rec_iou(completion, sample.fields["scale"], sample.fields["gt_box"])
        return {"acc@0.5": float(det.rec_correct(iou or 0.0)), "miou": iou or 0.0, "unparsable": float(iou is None)}

    def aggregate(self, scores: list[dict[str, float]], samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """Means of ``acc@0.5`` and ``miou``; ``unparsable`` as a count."""
        n = max(len(scores), 1)
        return {"acc@0.5": sum(s["acc@0.5"] for s in scores) / n, "miou": sum(s["miou"] for s in scores) / n,
                "unparsable": int(sum(s["unparsable"] for s in scores)), "n": len(scores)}
