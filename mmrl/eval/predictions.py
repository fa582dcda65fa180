"""Prediction files shared by the evaluators: JSON lines ``{"id": ..., "output": "raw model text", ...}``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from mmrl.errors import DataError
from mmrl.eval.records import json_rows
from mmrl.store import atomic_write_text, write_json_atomic

K = TypeVar("K")


def _check(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A row with ``id`` and a string ``output``; ``DataError`` naming ``where`` otherwise."""
    for key in ("id", "output"):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(row["output"], str):
        raise DataError(f"{where}: field 'output' must be a string")
    return row


def read_predictions(path: str | Path, key: Callable[[dict[str, Any], str], K]) -> dict[K, str]:
    """``{key(row, where): output}`` over the non-blank lines of ``path``; ``key`` checks the row's id fields and
    raises ``DataError`` naming ``where`` (``PATH:LINE``). A missing, unreadable or empty file, a malformed line and
    a repeated key are ``DataError``s naming the file (and the 1-based line)."""
    outputs: dict[K, str] = {}
    for where, row in json_rows(path, "predictions"):
        k = key(_check(row, where), where)
        if k in outputs:
            raise DataError(f"{where}: duplicate id {k!r}")
        outputs[k] = row["output"]
    if not outputs:
        raise DataError(f"{path}: no prediction rows (an empty file)")
    return outputs


def add_source_arguments(parser: argparse.ArgumentParser, *, data: str, outputs: str, per_sample: str,
                         max_new_tokens: int) -> argparse._ArgumentGroup:
    """The arguments every JSONL evaluator shares: ``--data`` (help ``data``), ``--predictions`` (rows ``{"id",
    "output"}``, help ``outputs``) or ``--model``, ``--output`` (metrics JSON), ``--per-sample`` (help
    ``per_sample``) and the "generation with --model" group (``--batch-size``, ``--max-new-tokens``), returned for
    the evaluator's own generation options."""
    parser.add_argument("--data", required=True, help=data)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help=outputs)
    source.add_argument("--model", help="checkpoint to generate the outputs with")
    parser.add_argument("--output", help="write the metrics JSON to this file")
    parser.add_argument("--per-sample", help=per_sample)
    model = parser.add_argument_group("generation with --model")
    model.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default 8)")
    model.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                       help=f"completion length cap (default {max_new_tokens})")
    return model


def report(args: argparse.Namespace, table: str, result: dict[str, Any], rows: list[dict[str, Any]]) -> int:
    """The end of a JSONL evaluator's ``run``: print ``table`` (``result`` formatted), write ``result`` to
    ``--output`` (JSON) and ``rows`` to ``--per-sample`` (JSON lines), atomically, when given; returns 0."""
    print(table)
    if args.output is not None:
        write_json_atomic(args.output, result)
    if args.per_sample is not None:
        atomic_write_text(args.per_sample, "".join(json.dumps(row) + "\n" for row in rows))
    return 0
