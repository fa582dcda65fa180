"""CAD code evaluation: ``mmrl eval cad``.

``--data`` is JSON lines ``{"id", "description", "code"[, "images"]}`` (``load_cad``); the outputs are scored by the
task declaring the ``cad`` benchmark (``tasks.cad_code``), so scripts run in the same sandbox and are measured by
the same code as in training. Metrics (cadrille's, with IoU in the description's frame by default):

* ``executable``: share of samples whose script produced a solid (1 - cadrille's invalid ratio);
* ``iou``: mean volume IoU over all samples, a failure counting 0;
* ``chamfer_mean``, ``chamfer_median``: Chamfer distance ×10³ over the executable samples (8,192 surface samples
  per solid, both normalised into the unit cube);
* ``n``, ``missing`` (records without a prediction row, scored as the empty output), ``unmatched`` (rows naming
  no record).

``--per-sample`` writes one row per record: ``{"id", "executable", "iou", "chamfer", "reason"}`` (``reason``: why
the script failed, "" when it ran). Predictions are JSON lines ``{"id": record id, "output": raw model text}``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrl.errors import DataError
from mmrl.eval import predictions
from mmrl.eval.records import bad_field, existing_file, get_id, get_str, id_rows
from mmrl.task import opened, task_for_benchmark

KEYS = ("executable", "iou", "chamfer_mean", "chamfer_median", "n", "missing", "unmatched")


@dataclass
class CadRecord:
    id: str
    description: str
    code: str
    """The reference script."""
    images: list[str] = field(default_factory=list)
    """Rendered views given with the description (absolute paths)."""


def load_cad(path: str | Path) -> list[CadRecord]:
    """The records of a CAD JSONL (blank lines skipped); ``DataError`` naming the file and line for a malformed
    row, a missing field, a repeated id or a missing image."""
    path = Path(path)
    records = []
    for where, rid, raw in id_rows(path, "CAD data"):
        images = raw.get("images", [])
        if not (isinstance(images, list) and all(isinstance(i, str) for i in images)):
            raise bad_field(where, "images", "a list of image paths", images)
        resolved = [str(existing_file(path.parent / i, "images", where)) for i in images]
        records.append(CadRecord(rid, get_str(raw, "description", where), get_str(raw, "code", where),
                                 resolved))
    return records


def evaluate(records: list[CadRecord], outputs: list[str | None], data: dict[str, Any] | None = None,
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics (``KEYS`` less ``unmatched``) and the per-sample rows of ``outputs`` (``None``: no output,
    scored as ``""`` and counted in ``missing``), scored by the task declaring ``cad`` with ``data:`` settings
    ``data`` (e.g. ``{"sandbox": "unsafe_local"}``)."""
    from mmrl.config import ModelConfig
    from mmrl.types import LoadContext

    defaults = ModelConfig()
    ctx = LoadContext(defaults.min_pixels, defaults.max_pixels, defaults.cache_dir)
    texts = ["" if text is None else text for text in outputs]
    with opened(task_for_benchmark("cad"), data or {}) as (task, cfg):
        samples = task.samples_from_records(records, cfg, ctx)
        rows = task.diagnose(texts, samples)
        metrics = task.aggregate(task.score_batch(texts, samples), samples, texts)
    per_sample = [{"id": r.id, **row} for r, row in zip(records, rows)]
    return {**metrics, "missing": sum(text is None for text in outputs)}, per_sample


def _generate(records: list[CadRecord], args: argparse.Namespace, data: dict[str, Any]) -> list[str]:
    from mmrl.config import ModelConfig
    from mmrl.eval.generate import benchmark_outputs

    return benchmark_outputs("cad", records, ModelConfig(path=args.model), data, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens)


def format_table(result: dict[str, Any]) -> str:
    width = max(len(k) for k in KEYS)

    def value(v: Any) -> str:
        return "-" if v is None else str(v) if isinstance(v, int) else f"{v:.4f}"

    return "\n".join(f"{k.ljust(width)}  {value(result[k]).rjust(8)}" for k in KEYS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "CAD code: run each output's CadQuery script in the sandbox and measure its solid against the reference: "
        "executable share, volume IoU (a failure counts 0), Chamfer distance x10^3 (mean and median over the "
        "executable outputs).")
    predictions.add_source_arguments(
        parser, data='JSON lines of {"id", "description", "code"[, "images"]}',
        outputs='JSONL of {"id": record id, "output": raw model text}',
        per_sample='write {"id", "executable", "iou", "chamfer", "reason"} rows here', max_new_tokens=512)
    parser.add_argument("--frame", choices=("description", "unit_cube"), default="description",
                        help="IoU frame: the solids as built (default) or each normalised into the unit cube")
    parser.add_argument("--sandbox", choices=("bwrap", "unsafe_local"), default="bwrap",
                        help="bwrap (isolated; default) or unsafe_local (no isolation: only for trusted outputs)")
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per core)")


def run(args: argparse.Namespace) -> int:
    """``mmrl eval cad``: score, print the table, write ``--output`` and ``--per-sample``, return 0."""
    from mmrl.config import AT_LEAST_1, check_options

    check_options(args, {"workers": AT_LEAST_1, "batch_size": AT_LEAST_1, "max_new_tokens": AT_LEAST_1})
    records = load_cad(args.data)
    if not records:
        raise DataError(f"{args.data}: no records")
    data = {"frame": args.frame, "sandbox": args.sandbox, "workers": args.workers}
    unmatched = 0
    if args.model is not None:
        outputs: list[str | None] = list(_generate(records, args, data))
    else:
        found = predictions.read_predictions(args.predictions, get_id)
        outputs = [found.get(r.id) for r in records]
        unmatched = len(set(found) - {r.id for r in records})
    metrics, rows = evaluate(records, outputs, data)
    result = {**{k: metrics[k] for k in KEYS if k != "unmatched"}, "unmatched": unmatched}
    return predictions.report(args, format_table(result), result, rows)
