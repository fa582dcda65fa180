"""COCO detection and referring-expression comprehension (REC) evaluation: ``mmrl eval detection`` and
``mmrl eval rec``.

Both score raw model outputs with the registered task of their benchmark (``tasks.detection``: the task declaring
``coco`` or ``rec``), so the parser, the coordinate map and the metrics are exactly the ones training uses:
samples come from ``task.samples_from_records``, metrics from ``mmrl.task.score_outputs`` (the task's
``aggregate`` of its per-sample ``score``; COCO mAP ranks every detection of the dataset, it is never a mean).

* **detection**: ``--data`` is a COCO instances JSON (``mmrl.eval.detection_format.load_coco``). Metrics: ``map``
  (AP@[.5:.95]), ``map50``, ``map75`` from pycocotools' ``COCOeval`` (``None`` when the ground truth has no box),
  micro ``precision@0.5``/``recall@0.5``/``f1@0.5`` (one-to-one same-label matches at IoU >= 0.5), ``n`` images,
  ``unparsable`` outputs (not a well-formed JSON list of boxes). A prediction row's ``id`` is the COCO
  ``image_id`` (an integer). Image sizes come from the JSON, so scoring ``--predictions`` opens no image file.
* **rec**: ``--data`` is REC JSON lines (``load_rec``). Metrics: ``acc@0.5`` (IoU > 0.5), ``miou``, ``n``,
  ``unparsable`` (no box found). A prediction row's ``id`` is the 0-based line number of the JSONL. Image headers
  are read only when the coordinate convention needs the size (``resized``, ``0-1000``), never for ``absolute``.

Predictions are JSON lines ``{"id": ..., "output": "raw model text"}``. A record without a row is scored as the
empty output (no boxes: a false negative for each of its objects) and counted in ``missing``, not in
``unparsable``; rows whose id names no record are counted in ``unmatched`` and otherwise ignored.

Coordinates of the outputs (``--coords``, ``mmrl.eval.screenspot.coord_scale``): ``absolute`` (original pixels;
the default for ``--predictions``), ``resized`` (pixels of the image after ``smart_resize`` under
``--min-pixels``/``--max-pixels``) or ``0-1000``. With ``--model`` the outputs are generated with the prompts the
task trains with (``mmrl.eval.generate.benchmark_outputs``) and scored, unless ``--coords`` says otherwise, in the
model family's convention, with its resize factor.

Bad input (a malformed COCO file or JSONL line, a missing or unreadable image that is needed, a malformed
prediction row) is a ``DataError`` of one line naming the file and the record or line; ``mmrl`` exits with 2.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from mmrl import hf_data
from mmrl.errors import DataError
from mmrl.eval import predictions
from mmrl.eval.detection_format import check_image, load_coco, load_rec
from mmrl.store import write_json_atomic
from mmrl.task import opened, score_outputs, task_for_benchmark
from mmrl.types import LoadContext

COORDS = ("absolute", "resized", "0-1000")
DETECTION_KEYS = ("map", "map50", "map75", "precision@0.5", "recall@0.5", "f1@0.5", "n", "unparsable", "missing",
                  "unmatched")
"""The metrics of ``mmrl eval detection``, in table order."""
REC_KEYS = ("acc@0.5", "miou", "n", "unparsable", "missing", "unmatched")
"""The metrics of ``mmrl eval rec``, in table order."""
_KEYS = {"coco": DETECTION_KEYS, "rec": REC_KEYS}


def _record_id(row: dict[str, Any], where: str) -> int:
    if not isinstance(row["id"], int) or isinstance(row["id"], bool):
        raise DataError(f"{where}: field 'id' must be an integer")
    return row["id"]


def read_predictions(path: str) -> dict[int, str]:
    """``{id: raw output}`` from JSON lines ``{"id": N, "output": "raw model text"}`` (blank lines skipped);
    ``DataError`` naming the file and 1-based line for a malformed row, a non-integer id or a repeated id."""
    return predictions.read_predictions(path, _record_id)


def align_outputs(ids: Sequence[int], outputs: Mapping[int, str]) -> tuple[list[str | None], int]:
    """The output of each record id (``None`` if absent) and how many outputs name no record."""
    return [outputs.get(i) for i in ids], len(set(outputs) - set(ids))


def score(benchmark: str, records: Any, outputs: Sequence[str | None], coords: str = "absolute",
          min_pixels: int | None = None, max_pixels: int | None = None, factor: int = 28) -> dict[str, Any]:
    """The metrics (``DETECTION_KEYS`` or ``REC_KEYS`` without ``unmatched``, plus ``coords``) of ``outputs``,
    one per record (``None``: no output, scored as ``""`` and counted in ``missing`` only), by the task declaring
    ``benchmark`` ("coco": ``records`` = ``(DetectionRecord list, category names)``; "rec": ``RecRecord`` list).
    ``min_pixels``/``max_pixels`` (``None``: ``smart_resize``'s defaults) and ``factor`` matter for ``resized``."""
    if coords not in COORDS:
        raise ValueError(f"unknown coords {coords!r}; valid: {', '.join(COORDS)}")
    from mmrl.config import ModelConfig

    defaults = ModelConfig()
    ctx = LoadContext(defaults.min_pixels if min_pixels is None else min_pixels,
                      defaults.max_pixels if max_pixels is None else max_pixels,
                      defaults.cache_dir, factor=factor, coords=coords)
    with opened(task_for_benchmark(benchmark), {}) as (task, cfg):
        samples = task.samples_from_records(records, cfg, ctx)
        if len(samples) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs for {len(samples)} samples")
        metrics = dict(score_outputs(task, samples, ["" if text is None else text for text in outputs]))
        # an absent output is scored as the empty text, which the task may count as unparsable: report it as missing
        blank = sum(task.score("", s).get("unparsable", 0) for s, text in zip(samples, outputs) if text is None)
    metrics["unparsable"] = int(metrics["unparsable"] - blank)
    metrics["missing"] = sum(text is None for text in outputs)
    metrics["coords"] = coords
    return metrics


def _result(benchmark: str, metrics: Mapping[str, Any], unmatched: int) -> dict[str, Any]:
    result = {k: metrics[k] for k in _KEYS[benchmark] if k != "unmatched"}
    return {**result, "unmatched": unmatched, "coords": metrics["coords"]}


def format_table(result: Mapping[str, Any]) -> str:
    """One ``name  value`` line per metric (``DETECTION_KEYS`` or ``REC_KEYS``), aligned; rates to 4 decimals,
    ``-`` for an undefined one."""
    keys = DETECTION_KEYS if "map" in result else REC_KEYS
    width = max(len(k) for k in keys)

    def value(v: Any) -> str:
        return "-" if v is None else str(v) if isinstance(v, int) else f"{v:.4f}"

    lines = [f"{k.ljust(width)}  {value(result[k]).rjust(8)}" for k in keys]
    return "\n".join([f"({result['coords']} coords)", *lines])


def _load(benchmark: str, args: argparse.Namespace) -> tuple[Any, list[int]]:
    """The benchmark's records of ``--data`` (its file, or a ``datasets`` source: ``mmrl.hf_data.cli_source``)
    and their prediction ids; ``DataError`` for an empty file."""
    data, images = args.data, args.images
    found = hf_data.cli_records("detection" if benchmark == "coco" else "rec", args)
    if found is not None:
        return found, [r.id for r in (found[0] if benchmark == "coco" else found)]
    if benchmark == "coco":
        found, categories = load_coco(data, images)
        if not found:
            raise DataError(f"{data}: no images")
        return (found, categories), [r.id for r in found]
    rows = load_rec(data, images)
    if not rows:
        raise DataError(f"{data}: no records")
    return rows, [r.id for r in rows]


def _check_images(benchmark: str, records: Any) -> None:
    """Before generating: every COCO image reads and has its annotated size (the coordinate map uses it). REC
    images need no check here: building the prompts in the model family's coordinates reads each one's header."""
    if benchmark == "coco":
        for image in records[0]:
            check_image(image)


def evaluate(benchmark: str, args: argparse.Namespace) -> dict[str, Any]:
    """The result dict of ``mmrl eval detection`` (``benchmark="coco"``) or ``mmrl eval rec`` (``"rec"``)."""
    records, ids = _load(benchmark, args)
    if args.model is not None:
        from mmrl.config import ModelConfig
        from mmrl.eval.generate import benchmark_outputs
        from mmrl.models.families import family_name, model_type_of
        from mmrl.plugins import MODEL_FAMILIES

        defaults = ModelConfig()
        model = ModelConfig(path=args.model, min_pixels=args.min_pixels or defaults.min_pixels,
                            max_pixels=args.max_pixels or defaults.max_pixels)
        family = family_name(model_type_of(args.model))
        _check_images(benchmark, records)
        texts = benchmark_outputs(benchmark, records, model, batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens)
        metrics = score(benchmark, records, texts, args.coords or MODEL_FAMILIES.capability(family, "coords"),
                        model.min_pixels, model.max_pixels, MODEL_FAMILIES.capability(family, "factor"))
        return _result(benchmark, metrics, 0)
    outputs, unmatched = align_outputs(ids, read_predictions(args.predictions))
    metrics = score(benchmark, records, outputs, args.coords or "absolute", args.min_pixels, args.max_pixels)
    return _result(benchmark, metrics, unmatched)


def _add_arguments(parser: argparse.ArgumentParser, data_help: str, images_help: str, id_help: str,
                   max_new_tokens: int) -> None:
    parser.add_argument("--data", required=True, help=f"{data_help}, or a Hugging Face dataset (hf:HUB_ID_OR_PATH, "
                                                      ".parquet/.arrow, save_to_disk folder)")
    hf_data.add_cli_arguments(parser)
    parser.add_argument("--images", help=images_help)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help=f'JSONL of {{"id": {id_help}, "output": raw model text}}')
    source.add_argument("--model", help="checkpoint to generate the outputs with")
    parser.add_argument(
        "--coords", choices=COORDS, default=None,
        help="coordinates of the outputs: original pixels, smart_resize'd pixels, or 0-1000 (default: absolute "
             "for --predictions; for --model, the convention of the model's family: resized for Qwen2.5-VL, "
             "0-1000 for Qwen2-VL, Qwen3-VL, Qwen3.5 and others)")
    parser.add_argument("--output", help="write the metrics JSON to this file")
    budget = ("pixel budget of the resized images: the model's with --model; with --predictions it matters for "
              "--coords resized only (default: smart_resize's, {})")
    parser.add_argument("--min-pixels", type=int, default=None, help=budget.format("56*56"))
    parser.add_argument("--max-pixels", type=int, default=None, help=budget.format("28*28*1280"))
    model = parser.add_argument_group("generation with --model")
    model.add_argument("--batch-size", type=int, default=8, help="images per generation batch (default 8)")
    model.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                       help=f"completion length cap (default {max_new_tokens})")


_UNMATCHED = ("A record without a prediction row is scored as the empty output (no boxes) and counted in 'missing' "
              "(not in 'unparsable'); rows whose id names no record are counted in 'unmatched'.")


def add_detection_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mmrl eval detection``."""
    parser.description = (
        "COCO detection: map/map50/map75 by pycocotools' COCOeval over the whole set, micro precision, recall "
        "and F1 at IoU 0.5, with the detection task's parser and coordinate map. Image sizes come from the COCO "
        "file: scoring --predictions opens no image. " + _UNMATCHED)
    _add_arguments(parser, "COCO instances JSON (images, annotations, categories)",
                   "folder of the images' file_name (default: images/ beside --data if it exists, else its "
                   "folder); read only with --model", "COCO image_id", 1024)


def add_rec_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mmrl eval rec``."""
    parser.description = (
        "Referring-expression comprehension: acc@0.5 (IoU > 0.5) and mean IoU of the first box of each output, "
        "with the rec task's parser. Image headers are read only when the coordinates need the size "
        "(--coords resized or 0-1000) or with --model. " + _UNMATCHED)
    _add_arguments(parser, 'REC JSON lines of {"image", "expression", "bbox": [x1, y1, x2, y2]}',
                   "folder the rows' image paths are relative to (default: the folder of --data); image headers "
                   "are read only for --model and --coords resized/0-1000", "0-based line number of --data", 128)


def _run(benchmark: str, args: argparse.Namespace) -> int:
    result = evaluate(benchmark, args)
    print(format_table(result))
    if args.output is not None:
        write_json_atomic(args.output, result)
    return 0


def run_detection(args: argparse.Namespace) -> int:
    """``mmrl eval detection``: score ``--predictions`` (or outputs generated by ``--model``), print the table,
    write ``--output``, return 0."""
    return _run("coco", args)


def run_rec(args: argparse.Namespace) -> int:
    """``mmrl eval rec``: as ``run_detection`` for REC JSON lines."""
    return _run("rec", args)
