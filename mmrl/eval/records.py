"""Checked access to the fields of JSON annotation records: each problem is a ``DataError`` of one line naming the
file, the record and the key (``data/x.json: record 3: missing field 'bbox'``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.errors import DataError


def short_repr(value: Any, limit: int = 60) -> str:
    """A one-line, bounded ``repr`` for error messages."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def get_field(raw: dict[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise DataError(f"{where}: missing field {key!r}")
    return raw[key]


def bad_field(where: str, key: str, expected: str, value: Any) -> DataError:
    return DataError(f"{where}: field {key!r} must be {expected}, got {short_repr(value)}")


def get_str(raw: dict[str, Any], key: str, where: str) -> str:
    value = get_field(raw, key, where)
    if not isinstance(value, str):
        raise bad_field(where, key, "a string", value)
    return value


def get_numbers(raw: dict[str, Any], key: str, where: str, count: int) -> list[float]:
    value = get_field(raw, key, where)
    if not (isinstance(value, list) and len(value) == count and all(is_number(v) for v in value)):
        raise bad_field(where, key, f"a list of {count} finite numbers", value)
    return [float(v) for v in value]


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; ``DataError`` if it is missing, unreadable or invalid."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {' '.join(str(exc).split())}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    return data


def read_json_array(path: Path) -> list[Any]:
    """The JSON array in ``path``; ``DataError`` if it is missing, unreadable, invalid or not an array."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return data


def image_size(path: str, where: str) -> tuple[int, int]:
    """``(width, height)`` from the image file's header (pixels not decoded); ``DataError`` naming ``where`` (the
    record) and the file if it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise DataError(f"{where}: image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: cannot read image {path}: {' '.join(str(exc).split()) or type(exc).__name__}") \
            from exc


def json_object(line: str, where: str) -> dict[str, Any]:
    """The JSON object on one line; ``DataError`` naming ``where`` (``PATH:LINE``) if it is invalid JSON or not an
    object."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, split at ``\\n`` only (so numbers match an editor's); ``DataError`` naming
    the file (``what``: "annotation", "predictions", ...) if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {' '.join(str(exc).split())}") from exc
