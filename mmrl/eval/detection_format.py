"""Detection (COCO instances) and referring-expression (REC JSON lines) loaders.

* **COCO instances JSON** (Lin et al. 2014): ``{"images": [{"id", "file_name", "width", "height"}, ...],
  "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "iscrowd"?: 0|1, "area"?}, ...],
  "categories": [{"id", "name"}, ...]}``. ``bbox`` is ``[x, y, w, h]`` in pixels; records carry it as
  ``[x1, y1, x2, y2]``. Crowd annotations (``iscrowd: 1``) are kept apart: COCO evaluation ignores detections
  on them, and rewards and F1 counts leave them out. Images are ``image_dir / file_name`` (default: ``images/``
  beside the JSON file if it exists, else its folder) and are not opened here.
* **REC JSON lines**: one ``{"image": path, "expression": str, "bbox": [x1, y1, x2, y2]}`` per line; ``image`` is
  relative to ``image_dir`` (default: the file's folder). A record's ``id`` is its 0-based line number (blank
  lines keep their number).

Bad input raises ``DataError`` with one line naming the file and the record (and the key or line), e.g.
``instances.json: annotations[4]: image_id 7 names no image``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrl.errors import DataError
from mmrl.eval.records import (bad_field, get_field, get_numbers, get_str, image_size, json_object, read_json,
                                read_lines, short_repr)


@dataclass(frozen=True)
class DetectionRecord:
    """One image of a COCO file with its boxes in original pixels."""

    id: int
    """COCO image id."""
    image: str
    """Resolved path of the image (not opened)."""
    width: int
    height: int
    boxes: list[list[float]]
    """``[x1, y1, x2, y2]`` of the non-crowd annotations, in file order."""
    labels: list[str]
    """Category name of each box."""
    source_file: str
    crowd_boxes: list[list[float]] = field(default_factory=list)
    """``[x1, y1, x2, y2]`` of the crowd annotations (COCO evaluation ignores detections on them)."""
    crowd_labels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecRecord:
    """One referring expression: the box in ``image`` that ``expression`` names."""

    id: int
    """0-based line number in the file."""
    image: str
    expression: str
    box: list[float]
    """``[x1, y1, x2, y2]`` in original pixels."""
    source_file: str
    line: int
    """1-based line number, for messages."""


def _int(raw: dict[str, Any], key: str, where: str, positive: bool = False) -> int:
    value = get_field(raw, key, where)
    if not isinstance(value, int) or isinstance(value, bool) or (positive and value <= 0):
        raise bad_field(where, key, "a positive integer" if positive else "an integer", value)
    return value


def _objects(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    """``data[key]`` as a list of JSON objects."""
    if key not in data:
        raise DataError(f"{path}: missing top-level key {key!r} (a COCO instances file has images, annotations "
                        "and categories)")
    items = data[key]
    if not isinstance(items, list):
        raise DataError(f"{path}: {key!r} must be a list, got {short_repr(items)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: {key}[{i}]: expected a JSON object, got {type(item).__name__}")
    return items


def _xywh_box(raw: dict[str, Any], where: str) -> list[float]:
    x, y, w, h = get_numbers(raw, "bbox", where, 4)
    if w < 0 or h < 0:
        raise bad_field(where, "bbox", "[x, y, w, h] with w, h >= 0", raw["bbox"])
    return [x, y, x + w, y + h]


def _default_image_dir(path: Path) -> Path:
    return path.parent / "images" if (path.parent / "images").is_dir() else path.parent


def load_coco(path: str | Path, image_dir: str | Path | None = None) -> tuple[list[DetectionRecord], list[str]]:
    """The images of a COCO instances file (in file order) and the category names (in category-id order)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO instances JSON object, got {type(data).__name__}")
    base = Path(image_dir) if image_dir is not None else _default_image_dir(path)
    categories: dict[int, str] = {}
    for i, raw in enumerate(_objects(data, "categories", path)):
        where = f"{path}: categories[{i}]"
        cid = _int(raw, "id", where)
        if cid in categories:
            raise DataError(f"{where}: duplicate category id {cid}")
        categories[cid] = get_str(raw, "name", where)
    images: dict[int, dict[str, Any]] = {}
    for i, raw in enumerate(_objects(data, "images", path)):
        where = f"{path}: images[{i}]"
        image_id = _int(raw, "id", where)
        if image_id in images:
            raise DataError(f"{where}: duplicate image id {image_id}")
        images[image_id] = dict(file=str(base / get_str(raw, "file_name", where)), width=_int(raw, "width", where, True),
                                height=_int(raw, "height", where, True), boxes=[], labels=[], crowd_boxes=[],
                                crowd_labels=[])
    for i, raw in enumerate(_objects(data, "annotations", path)):
        where = f"{path}: annotations[{i}]"
        image_id, category_id = _int(raw, "image_id", where), _int(raw, "category_id", where)
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id} names no image in 'images'")
        if category_id not in categories:
            raise DataError(f"{where}: category_id {category_id} names no category in 'categories'")
        box, crowd = _xywh_box(raw, where), raw.get("iscrowd", 0) == 1
        image = images[image_id]
        image["crowd_boxes" if crowd else "boxes"].append(box)
        image["crowd_labels" if crowd else "labels"].append(categories[category_id])
    records = [DetectionRecord(id=k, image=v.pop("file"), source_file=str(path), **v) for k, v in images.items()]
    return records, [categories[k] for k in sorted(categories)]


def load_rec(path: str | Path, image_dir: str | Path | None = None) -> list[RecRecord]:
    """The records of a REC JSON-lines file (blank lines skipped, keeping their number)."""
    path = Path(path)
    lines = read_lines(path, "REC")
    base = Path(image_dir) if image_dir is not None else path.parent
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}:{index + 1}"
        raw = json_object(line, where)
        x1, y1, x2, y2 = get_numbers(raw, "bbox", where, 4)
        if x2 < x1 or y2 < y1:
            raise bad_field(where, "bbox", "[x1, y1, x2, y2] with x1 <= x2, y1 <= y2", raw["bbox"])
        records.append(RecRecord(index, str(base / get_str(raw, "image", where)), get_str(raw, "expression", where),
                                 [x1, y1, x2, y2], str(path), index + 1))
    return records


def check_image(record: DetectionRecord) -> None:
    """The image exists, its header reads and its size is the annotated one (the coordinate map uses it);
    ``DataError`` naming the file, the image id and the image."""
    where = f"{record.source_file}: image id {record.id}"
    size = image_size(record.image, where)
    if size != (record.width, record.height):
        raise DataError(f"{where}: {record.image} is {size[0]}x{size[1]}, annotated {record.width}x{record.height}")
