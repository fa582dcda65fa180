"""Prediction files shared by the evaluators: JSON lines ``{"id": ..., "output": "raw model text", ...}``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from mmrl.errors import DataError
from mmrl.eval.records import json_object, read_lines

K = TypeVar("K")


def _row(line: str, where: str) -> dict[str, Any]:
    """One JSON object with ``id`` and a string ``output``; ``DataError`` naming ``where`` otherwise."""
    row = json_object(line, where)
    for key in ("id", "output"):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(row["output"], str):
        raise DataError(f"{where}: field 'output' must be a string")
    return row


def read_predictions(path: str | Path, key: Callable[[dict[str, Any], str], K]) -> dict[K, str]:
    """``{key(row, where): output}`` over the non-blank lines of ``path``; ``key`` checks the row's id fields and
    raises ``DataError`` naming ``where`` (``PATH:LINE``). A missing or unreadable file, a malformed line and a
    repeated key are ``DataError``s naming the file and 1-based line."""
    path = Path(path)
    lines = read_lines(path, "predictions")
    outputs: dict[K, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        row = _row(line, where)
        k = key(row, where)
        if k in outputs:
            raise DataError(f"{where}: duplicate id {k!r}")
        outputs[k] = row["output"]
    return outputs
