"""ScreenSpot (v1, v2) and ScreenSpot-Pro evaluation: parse each raw model output to a click point, map it
to original image pixels, and count it correct when it lies inside the element box (edges included).

Coordinate conventions of the raw outputs (``coords``):

* ``absolute``: pixels of the original screenshot;
* ``resized``: pixels of the image a Qwen2-VL/2.5-VL model saw, i.e. the original resized by
  ``mmrl.vision.smart_resize`` under the pixel budget ``min_pixels``/``max_pixels``: ``x·W/W'``, ``y·H/H'``;
* ``0-1000``: normalised to 0..1000 of the original size: ``x·W/1000``, ``y·H/1000``.

``W, H`` come from the annotation's ``img_size`` (ScreenSpot-Pro) or else from the image file's header.
The point is parsed with ``rewards.parsing.parse_point`` (a box answer counts by its centre), the same parser
the training rewards use. An output that does not parse is ``wrong_format`` and a record without an output is
``missing``; both count as wrong.

Tables: for v1/v2, accuracy per split (mobile, desktop, web) x ui type (text, icon) with row and column
totals, and ``cell_mean``, the mean of the six cell accuracies (the "Average" column of the SeeClick paper's
ScreenSpot table); for Pro, accuracy by group (text/icon/all), by application, by ui type and overall. The
top-level ``accuracy`` is correct / all records. An empty cell's accuracy is ``None``.
"""
from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mmrl.errors import DataError
from mmrl import hf_data
from mmrl.eval import predictions, records
from mmrl.eval.screenspot_format import PRO_SPLIT, SPLITS, UI_TYPES, GroundingRecord, load_screenspot
from mmrl.store import write_json_atomic
from mmrl.vision import smart_resize
from rewards.gui import click_in_box, to_original
from rewards.parsing import parse_point

COORDS = ("absolute", "resized", "0-1000")

Row = tuple[GroundingRecord, bool]
"""A record and whether its prediction was correct."""


def image_size(record: GroundingRecord) -> tuple[int, int]:
    """``(width, height)`` of the original image: ``img_size`` if annotated, else read from the file header
    (the pixels are not decoded). ``DataError`` naming the record if the image cannot be read."""
    if record.img_size is not None:
        return record.img_size
    return records.image_size(record.image, f"{record.source_file}: record {record.id}")


def coord_scale(
    coords: str, size: tuple[int, int], min_pixels: int | None = None, max_pixels: int | None = None,
    factor: int = 28,
) -> tuple[float, float]:
    """``(sx, sy)`` = original / answer-space size for an original image of ``size = (W, H)``; ``resized`` is
    ``smart_resize`` with the model family's ``factor`` (28 for Qwen2/2.5-VL, 32 for Qwen3-VL) and pixel budget."""
    if coords == "absolute":
        return 1.0, 1.0
    width, height = size
    if coords == "0-1000":
        return width / 1000, height / 1000
    budget = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    seen_h, seen_w = smart_resize(height, width, factor=factor, **budget)
    return width / seen_w, height / seen_h


def _grade(
    record: GroundingRecord, output: Any, scale_of: Callable[[GroundingRecord], tuple[float, float]]
) -> dict[str, Any]:
    """``{"id", "status", "point"}`` for one record; ``point`` is in original pixels (``None`` if none)."""
    point = parse_point(output)
    if point is None:
        return {"file": Path(record.source_file).name, "id": record.id, "status": "wrong_format", "point": None}
    x, y = to_original(point, scale_of(record))
    status = "correct" if click_in_box((x, y), record.gt_box) else "wrong"
    return {"file": Path(record.source_file).name, "id": record.id, "status": status, "point": [x, y]}


def _cell(rows: list[Row]) -> dict[str, Any]:
    correct = sum(ok for _, ok in rows)
    return {"correct": correct, "n": len(rows), "accuracy": correct / len(rows) if rows else None}


def _by_ui_type(rows: list[Row]) -> dict[str, dict[str, Any]]:
    cells = {t: _cell([r for r in rows if r[0].ui_type == t]) for t in UI_TYPES}
    cells["all"] = _cell(rows)
    return cells


def _group_by(rows: list[Row], key: Callable[[GroundingRecord], str]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(key(row[0]), []).append(row)
    return dict(sorted(groups.items()))


def screenspot_table(rows: list[Row]) -> dict[str, Any]:
    """v1/v2 table: ``{split: {text, icon, all}}`` for mobile/desktop/web, an ``all`` row and ``cell_mean``."""
    table: dict[str, Any] = {s: _by_ui_type([r for r in rows if r[0].split == s]) for s in SPLITS}
    table["all"] = _by_ui_type(rows)
    cells = [table[s][t]["accuracy"] for s in SPLITS for t in UI_TYPES if table[s][t]["n"]]
    table["cell_mean"] = sum(cells) / len(cells) if cells else None
    return table


def pro_breakdowns(rows: list[Row]) -> dict[str, Any]:
    """ScreenSpot-Pro accuracy by group (text/icon/all), by application, by ui type, and overall."""
    return {
        "by_group": {g: _by_ui_type(rs) for g, rs in _group_by(rows, lambda r: r.group).items()},
        "by_application": {a: _cell(rs) for a, rs in _group_by(rows, lambda r: r.application).items()},
        "by_ui_type": {t: _cell([r for r in rows if r[0].ui_type == t]) for t in UI_TYPES},
        "overall": _cell(rows),
    }


def align_outputs(records: list[GroundingRecord], outputs: Mapping[Any, str]) -> tuple[list[str | None], int]:
    """The output of each record (``None`` if absent) and how many outputs matched no record. Keys are
    ``(file name or stem, id)`` or a bare ``id``; a bare id shared by records of several files (v1/v2 ids are
    per-file indices) raises ``DataError``."""
    counts = Counter(r.id for r in records)
    aligned: list[str | None] = []
    used: set[Any] = set()
    for r in records:
        name = Path(r.source_file).name
        keys = [(name, r.id), (Path(name).stem, r.id)]
        key = next((k for k in keys if k in outputs), None)
        if key is None and r.id in outputs:
            if counts[r.id] > 1:
                raise DataError(
                    f"prediction id {r.id!r} matches records in several files; add a \"file\" field (e.g. "
                    f"{name!r}) to the prediction rows"
                )
            key = r.id
        used.add(key)
        aligned.append(outputs[key] if key is not None else None)
    return aligned, len(set(outputs) - used)


def score_predictions(
    records: list[GroundingRecord],
    outputs: Mapping[str, Any],
    coords: str = "absolute",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    factor: int = 28,
) -> dict[str, Any]:
    """Score raw outputs (``record id`` or ``(file, record id)`` -> model text) in the ``coords`` convention.

    Returns ``{"coords", "n", "correct", "accuracy", "wrong_format", "missing", "unmatched", "screenspot"?,
    "screenspot_pro"?, "details"}``; ``screenspot`` (v1/v2 table) and ``screenspot_pro`` appear when such
    records are present, and ``details`` lists ``{"id", "status", "point"}`` per record. ``min_pixels`` and
    ``max_pixels`` and the model family's resize ``factor`` matter only for ``resized`` (``None``: ``smart_resize``'s
    defaults).
    """
    if coords not in COORDS:
        raise ValueError(f"unknown coords {coords!r}; valid: {', '.join(COORDS)}")
    sizes: dict[str, tuple[int, int]] = {}

    def scale_of(record: GroundingRecord) -> tuple[float, float]:
        if coords == "absolute":
            return 1.0, 1.0
        if record.image not in sizes:
            sizes[record.image] = image_size(record)
        return coord_scale(coords, sizes[record.image], min_pixels, max_pixels, factor)

    aligned, unmatched = align_outputs(records, outputs)
    details = [
        _grade(r, text, scale_of)
        if text is not None
        else {"file": Path(r.source_file).name, "id": r.id, "status": "missing", "point": None}
        for r, text in zip(records, aligned)
    ]
    statuses = [d["status"] for d in details]
    rows = [(r, s == "correct") for r, s in zip(records, statuses)]
    result: dict[str, Any] = {"coords": coords, **_cell(rows)}
    result["wrong_format"] = statuses.count("wrong_format")
    result["missing"] = statuses.count("missing")
    result["unmatched"] = unmatched
    v12_rows = [row for row in rows if row[0].split in SPLITS]
    pro_rows = [row for row in rows if row[0].split == PRO_SPLIT]
    if v12_rows:
        result["screenspot"] = screenspot_table(v12_rows)
    if pro_rows:
        result["screenspot_pro"] = pro_breakdowns(pro_rows)
    result["details"] = details
    return result


def _pct(cell: Mapping[str, Any]) -> str:
    accuracy = "-" if cell["accuracy"] is None else f"{100 * cell['accuracy']:.1f}"
    return f"{accuracy} ({cell['correct']}/{cell['n']})"


def _grid(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """Left-aligned text columns."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]


def format_table(result: Mapping[str, Any]) -> str:
    """The official tables of ``score_predictions``'s result as aligned text, in percent (correct/n)."""
    lines: list[str] = []
    columns = [*UI_TYPES, "all"]
    if "screenspot" in result:
        table = result["screenspot"]
        lines.append("ScreenSpot v1/v2")
        lines += _grid(["split", *columns], ([s, *(_pct(table[s][c]) for c in columns)] for s in [*SPLITS, "all"]))
        mean = table["cell_mean"]
        lines.append(f"mean of the split x type cells: {'-' if mean is None else f'{100 * mean:.1f}'}")
        lines.append("")
    if "screenspot_pro" in result:
        pro = result["screenspot_pro"]
        lines.append("ScreenSpot-Pro")
        lines += _grid(["group", *columns], ([g, *(_pct(c[k]) for k in columns)] for g, c in pro["by_group"].items()))
        lines += _grid(["application", "accuracy"], ([a, _pct(c)] for a, c in pro["by_application"].items()))
        lines += _grid(["ui_type", "accuracy"], ([t, _pct(c)] for t, c in pro["by_ui_type"].items()))
        lines.append("")
    lines.append(
        f"overall ({result['coords']} coords): {_pct(result)}  "
        f"wrong_format: {result['wrong_format']}  missing: {result['missing']}  "
        f"unmatched predictions: {result['unmatched']}"
    )
    return "\n".join(lines)


def _prediction_key(row: dict[str, Any], where: str) -> Any:
    """The key of a row ``{"id": str|int, "output": str, "file"?: str}``: the id, or ``(file, id)`` when the row
    names the annotation file (needed for v1/v2 folders: ids are indices)."""
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise DataError(f"{where}: field 'id' must be a string or an integer")
    if "file" in row and not isinstance(row["file"], str):
        raise DataError(f"{where}: field 'file' must be a string")
    return (row["file"], str(row["id"])) if "file" in row else str(row["id"])


def read_predictions(path: str | Path) -> dict[Any, str]:
    """``{id: raw output}`` from a JSONL file of ``{"id": ..., "output": "raw model text"}`` rows (blank lines
    skipped). ``DataError`` naming the file and the 1-based line number for a malformed line or a repeated id."""
    return predictions.read_predictions(path, _prediction_key)


def evaluate_predictions_file(
    data: str | Path | list[GroundingRecord],
    predictions_jsonl: str | Path,
    coords: str = "absolute",
    image_dir: str | Path | None = None,
    output: str | Path | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """Load annotations (file or folder; or take loaded records), read the predictions JSONL, score, and write the
    result JSON to ``output`` if given. Returns the result of ``score_predictions``."""
    records = data if isinstance(data, list) else load_screenspot(data, image_dir)
    result = score_predictions(records, read_predictions(predictions_jsonl), coords, min_pixels, max_pixels)
    if output is not None:
        write_json_atomic(output, result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mmrl eval screenspot``."""
    parser.add_argument("--data", required=True, help="annotation .json file or folder (ScreenSpot v1/v2/Pro), or a "
                        "Hugging Face dataset (hf:HUB_ID_OR_PATH, .parquet/.arrow, save_to_disk folder)")
    hf_data.add_cli_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help='JSONL of {"id": record id, "output": raw model text}')
    source.add_argument("--model", help="checkpoint to generate the outputs with")
    parser.add_argument(
        "--coords", choices=COORDS, default=None,
        help="coordinates of the outputs: original pixels, smart_resize'd pixels, or 0-1000 "
        "(default: absolute for --predictions; for --model, the convention of the model's family: resized for "
        "Qwen2.5-VL, 0-1000 for Qwen2-VL, Qwen3-VL, Qwen3.5 and others)",
    )
    parser.add_argument("--images", help="folder img_filename is relative to (default: found beside --data)")
    parser.add_argument("--output", help="write the result JSON to this file")
    parser.add_argument("--min-pixels", type=int, default=None, help="pixel budget of --coords resized")
    parser.add_argument("--max-pixels", type=int, default=None, help="pixel budget of --coords resized")


def load_records(args: argparse.Namespace) -> list[GroundingRecord]:
    """The records of ``--data``: a ``datasets`` source (``mmrl.hf_data.cli_source``) or annotation files."""
    found = hf_data.cli_records("gui_grounding", args)
    return load_screenspot(args.data, args.images) if found is None else found


def run(args: argparse.Namespace) -> int:
    """Evaluate ``--predictions`` (or outputs generated by ``--model``), print the table, return 0."""
    if args.model is not None:
        from mmrl.config import ModelConfig
        from mmrl.eval.generate import benchmark_outputs
        from mmrl.models.families import family_name, model_type_of
        from mmrl.plugins import MODEL_FAMILIES

        records = load_records(args)
        defaults = ModelConfig()
        model = ModelConfig(path=args.model, min_pixels=args.min_pixels or defaults.min_pixels,
                            max_pixels=args.max_pixels or defaults.max_pixels)
        family = family_name(model_type_of(args.model))
        texts = benchmark_outputs("screenspot", records, model)
        outputs = {(Path(r.source_file).name, r.id): text for r, text in zip(records, texts)}
        coords = args.coords or MODEL_FAMILIES.capability(family, "coords")
        result = score_predictions(records, outputs, coords, model.min_pixels, model.max_pixels,
                                   MODEL_FAMILIES.capability(family, "factor"))
        if args.output is not None:
            write_json_atomic(args.output, result)
    else:
        result = evaluate_predictions_file(
            load_records(args), args.predictions, args.coords or "absolute", args.images, args.output, args.min_pixels,
            args.max_pixels,
        )
    print(format_table(result))
    return 0
