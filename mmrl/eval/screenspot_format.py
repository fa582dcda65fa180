"""ScreenSpot (v1, v2) and ScreenSpot-Pro annotation loaders -> ``GroundingRecord``.

Formats (as released):

* **ScreenSpot v1** (SeeClick, Cheng et al. 2024): ``screenspot_{mobile,desktop,web}.json``, and
  **ScreenSpot-v2** (OS-Atlas, Wu et al. 2024): ``screenspot_{mobile,desktop,web}_v2.json``. Each file is a
  JSON array of ``{"img_filename", "bbox": [x, y, w, h], "instruction", "data_type": "text"|"icon",
  "data_source"}``; the split (mobile/desktop/web) comes from the file name. Images ship in
  ``screenspot_imgs/`` (v1) or ``screenspotv2_image/`` (v2).
* **ScreenSpot-Pro** (Li et al. 2025): one JSON array per application (``annotations/vscode_macos.json``) of
  ``{"id", "img_filename", "bbox": [x1, y1, x2, y2], "img_size": [w, h], "instruction", "application",
  "platform", "group", "ui_type": "text"|"icon"}`` (extra keys such as ``instruction_cn`` are ignored);
  ``img_filename`` is relative to ``images/`` beside ``annotations/``.

Every ``gt_box`` is ``[x1, y1, x2, y2]`` in original image pixels. Record ids are strings: the Pro ``id`` field
(``"vscode_macos_0"``), and for v1/v2 the record's 0-based index in its file (``"3"``), unique within a file
only; ``source_file`` tells records of different files apart. Images are not opened here: ``image`` is the
resolved path only.

Bad input raises ``DataError`` with one line naming the file, the record index and the key, e.g.
``data/x.json: record 3: missing field 'bbox'``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.errors import DataError
from mmrl.eval.records import bad_field, get_field, get_numbers, get_str, read_json_array, xyxy_box

SPLITS = ("mobile", "desktop", "web")
UI_TYPES = ("text", "icon")
PRO_SPLIT = "pro"
"""``GroundingRecord.split`` of every ScreenSpot-Pro record."""

IMAGE_DIR_CANDIDATES = ("images", "screenspot_imgs", "screenspotv2_image", "../images", ".")
"""Tried in order, relative to the annotation file's folder, when no ``image_dir`` is given; the first
existing folder wins (``../images`` is ScreenSpot-Pro's ``annotations/`` + ``images/`` layout)."""

_SPLIT_RE = re.compile(r"screenspot_(mobile|desktop|web)(?:_v2)?$")


@dataclass
class GroundingRecord:
    """One GUI-grounding query: click the element described by ``instruction`` in ``image``."""

    id: str
    image: str
    """Path of the screenshot (resolved, not opened)."""
    instruction: str
    gt_box: list[float]
    """``[x1, y1, x2, y2]`` in original image pixels."""
    ui_type: str
    """``"text"`` or ``"icon"`` (v1/v2 ``data_type``, Pro ``ui_type``)."""
    split: str
    """``mobile``/``desktop``/``web`` for v1/v2 (another v1/v2-format file ``screenspot_<name>.json`` is split
    ``<name>``); ``pro`` for ScreenSpot-Pro."""
    group: str = ""
    """Pro application group (Dev, Creative, CAD, Scientific, Office, OS); empty for v1/v2."""
    application: str = ""
    """Pro ``application``; v1/v2 ``data_source`` (ios, android, macos, windows, gitlab, ...)."""
    platform: str = ""
    """Pro ``platform`` (macos, windows, linux); empty for v1/v2."""
    img_size: tuple[int, int] | None = None
    """``(width, height)`` of the original image when the annotation gives it (Pro), else ``None``."""
    source_file: str = ""
    """The annotation file this record came from."""


def _get_choice(raw: dict[str, Any], key: str, where: str, choices: tuple[str, ...]) -> str:
    value = get_field(raw, key, where)
    if value not in choices:
        raise bad_field(where, key, " or ".join(repr(c) for c in choices), value)
    return value


def _get_box(raw: dict[str, Any], where: str, xywh: bool) -> list[float]:
    """``bbox`` as ``[x1, y1, x2, y2]``, converted from ``[x, y, w, h]`` when ``xywh``."""
    box = xyxy_box(get_numbers(raw, "bbox", where, 4), xywh)
    if box is None:
        layout = "[x, y, w, h] with w, h >= 0" if xywh else "[x1, y1, x2, y2] with x1 <= x2, y1 <= y2"
        raise bad_field(where, "bbox", layout, raw["bbox"])
    return box


def _get_size(raw: dict[str, Any], where: str) -> tuple[int, int]:
    value = get_field(raw, "img_size", where)
    ok = isinstance(value, list) and len(value) == 2
    if not (ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise bad_field(where, "img_size", "[width, height] as two positive integers", value)
    return value[0], value[1]


def _v12_record(raw: dict[str, Any], index: int, path: Path, split: str, image_base: Path) -> GroundingRecord:
    """One ScreenSpot v1/v2 record (``bbox`` is ``[x, y, w, h]``)."""
    where = f"{path}: record {index}"
    return GroundingRecord(
        id=str(index),
        image=str(image_base / get_str(raw, "img_filename", where)),
        instruction=get_str(raw, "instruction", where),
        gt_box=_get_box(raw, where, xywh=True),
        ui_type=_get_choice(raw, "data_type", where, UI_TYPES),
        split=split,
        application=get_str(raw, "data_source", where),
        source_file=str(path),
    )


def _pro_record(raw: dict[str, Any], index: int, path: Path, image_base: Path) -> GroundingRecord:
    """One ScreenSpot-Pro record (``bbox`` is ``[x1, y1, x2, y2]``)."""
    where = f"{path}: record {index}"
    record_id = get_field(raw, "id", where)
    if not (isinstance(record_id, (str, int)) and not isinstance(record_id, bool)):
        raise bad_field(where, "id", "a string or an integer", record_id)
    return GroundingRecord(
        id=str(record_id),
        image=str(image_base / get_str(raw, "img_filename", where)),
        instruction=get_str(raw, "instruction", where),
        gt_box=_get_box(raw, where, xywh=False),
        ui_type=_get_choice(raw, "ui_type", where, UI_TYPES),
        split=PRO_SPLIT,
        group=get_str(raw, "group", where),
        application=get_str(raw, "application", where),
        platform=get_str(raw, "platform", where),
        img_size=_get_size(raw, where),
        source_file=str(path),
    )


def _image_base(json_dir: Path) -> Path:
    """The first existing folder of ``IMAGE_DIR_CANDIDATES`` under ``json_dir`` (``json_dir`` itself last)."""
    for name in IMAGE_DIR_CANDIDATES:
        candidate = json_dir / name
        if candidate.is_dir():
            return candidate
    return json_dir


def _split_of(path: Path) -> str:
    """mobile/desktop/web from ``screenspot_<split>[_v2].json``; other files (e.g. the synthetic generator's
    ``screenspot_train.json``) are their own split, named by the stem without ``screenspot_``."""
    match = _SPLIT_RE.search(path.stem)
    return match.group(1) if match else path.stem.removeprefix("screenspot_")


def load_screenspot_file(path: str | Path, image_dir: str | Path | None = None) -> list[GroundingRecord]:
    """Load one ScreenSpot v1/v2 or ScreenSpot-Pro annotation file (the flavour is told from the first
    record: ``data_type`` means v1/v2, ``ui_type`` means Pro). Image paths are ``image_dir`` /
    ``img_filename``, or relative to the first folder of ``IMAGE_DIR_CANDIDATES`` that exists."""
    path = Path(path)
    raws = read_json_array(path)
    image_base = Path(image_dir) if image_dir is not None else _image_base(path.parent)
    for index, raw in enumerate(raws):
        if not isinstance(raw, dict):
            raise DataError(f"{path}: record {index}: expected a JSON object, got {type(raw).__name__}")
    if not raws:
        return []
    if "data_type" in raws[0]:
        split = _split_of(path)
        return [_v12_record(raw, i, path, split, image_base) for i, raw in enumerate(raws)]
    if "ui_type" in raws[0]:
        return [_pro_record(raw, i, path, image_base) for i, raw in enumerate(raws)]
    raise DataError(
        f"{path}: record 0: missing field 'data_type' (ScreenSpot v1/v2) or 'ui_type' (ScreenSpot-Pro)"
    )


def load_screenspot(path: str | Path, image_dir: str | Path | None = None) -> list[GroundingRecord]:
    """Load a ScreenSpot annotation file, or every ``*.json`` file of a folder in sorted order.

    Raises ``DataError`` if the path does not exist, a folder holds no ``.json`` file, or two records share
    an id.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.is_file())
        if not files:
            raise DataError(f"{path}: no .json annotation files in this folder")
    elif path.exists():
        files = [path]
    else:
        raise DataError(f"{path}: no such file or directory")
    records: list[GroundingRecord] = []
    for file in files:
        seen: set[str] = set()
        for index, record in enumerate(load_screenspot_file(file, image_dir)):
            if record.id in seen:
                raise DataError(f"{file}: record {index}: duplicate id {record.id!r}")
            seen.add(record.id)
            records.append(record)
    return records
