"""Checked access to the fields of JSON annotation records: each problem is a ``DataError`` of one line naming the
file, the record and the key (``data/x.json: record 3: missing field 'bbox'``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from mmrl.errors import DataError, read_text


def short_repr(value: Any, limit: int = 60) -> str:
    """A one-line, bounded ``repr`` for error messages."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool); an int too large for a float (JSON allows 400 digits) is not one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


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
    return existing_file(base / get_str(raw, key, where), key, where)


def existing_file(path: Path, key: str, where: str) -> Path:
    """``path`` (the image that field ``key`` of the record at ``where`` names) if it is a file; ``DataError``
    naming ``where`` if it is not, or if the file system rejects the name (e.g. longer than it allows)."""
    try:
        found = path.is_file()
    except OSError as exc:
        raise bad_field(where, key, "a usable file path", exc.strerror) from exc
    if not found:
        raise DataError(f"{where}: image not found: {path}")
    return path


def get_numbers(raw: dict[str, Any], key: str, where: str, count: int) -> list[float]:
    value = get_field(raw, key, where)
    if not (isinstance(value, list) and len(value) == count and all(is_number(v) for v in value)):
        raise bad_field(where, key, f"a list of {count} finite numbers", value)
    return [float(v) for v in value]


def xyxy_box(values: list[float], xywh: bool) -> list[float] | None:
    """``[x1, y1, x2, y2]`` from four numbers in that layout or, with ``xywh``, as ``[x, y, w, h]``; ``None`` when
    the box would have a negative width or height."""
    a, b, c, d = values
    box = [a, b, a + c, b + d] if xywh else [a, b, c, d]
    return None if box[2] < box[0] or box[3] < box[1] else box


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; ``DataError`` if it is missing, unreadable, empty or invalid."""
    text = read_text(path, "JSON")
    if not text.strip():
        raise DataError(f"{path}: empty file (expected JSON)")
    return parse_json(text, str(path), whole_file=True)


def parse_json(text: str, where: str, whole_file: bool = False) -> Any:
    """The JSON value of ``text``; ``DataError`` naming ``where`` (with a ``whole_file``, also the line and column
    of a syntax error) when it is invalid, nested too deeply for Python's parser or holds an integer too long to
    convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f" at line {exc.lineno} column {exc.colno}" if whole_file else ""
        raise DataError(f"{where}: invalid JSON{at}: {exc.msg}") from exc
    except RecursionError as exc:  # brackets nested thousands deep
        raise DataError(f"{where}: invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # an integer of more than 4300 digits, which Python refuses to convert
        raise DataError(f"{where}: invalid JSON: {str(exc).split(':')[0]}") from exc


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
    value = parse_json(line, where)
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
    the file (``what``: "annotation", "predictions", ...) if it is missing, a folder, unreadable or not UTF-8."""
    return read_text(path, what).split("\n")
