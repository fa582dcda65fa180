"""Checked access to the fields of JSON annotation records: each problem is a ``DataError`` of one line naming the
file, the record and the key (``data/x.json: record 3: missing field 'bbox'``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

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


def get_id(raw: dict[str, Any], where: str) -> str:
    """The record's ``id`` (a string or an integer) as a string."""
    value = get_field(raw, "id", where)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise bad_field(where, "id", "a string or an integer", value)
    return str(value)


def get_file(raw: dict[str, Any], key: str, base: Path, where: str) -> Path:
    """The path in ``raw[key]`` relative to the folder ``base``; ``DataError`` if that file does not exist."""
    path = base / get_str(raw, key, where)
    if not path.is_file():
        raise DataError(f"{where}: image not found: {path}")
    return path


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


def json_rows(path: str | Path, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for the lines of a JSONL file (``where`` = ``PATH:LINE``), blank lines skipped; ``DataError``
    naming the file (``what`` it is) when it is missing or unreadable, and ``where`` for a line that is not a JSON
    object."""
    for lineno, line in enumerate(read_lines(path, what), start=1):
        if line.strip():
            where = f"{path}:{lineno}"
            yield where, json_object(line, where)


def id_rows(path: Path, what: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(where, id, row)`` for the rows of a JSONL of records with unique ids (``get_id``); ``DataError`` naming
    ``PATH:LINE`` for a malformed line or a repeated id."""
    seen: set[str] = set()
    for where, raw in json_rows(path, what):
        rid = get_id(raw, where)
        if rid in seen:
            raise DataError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        yield where, rid, raw


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
