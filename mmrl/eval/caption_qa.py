"""Captioning-by-QA evaluation: ``mmrl eval caption_qa`` (CapRL's decoupled, Prism-style protocol).

A caption is scored by how many of its image's multiple-choice questions a text-only judge answers correctly from
the caption alone: every question asked once, its options shuffled (seeded) with "Can not answer based on the
caption" added, the first option letter of the judge's answer parsed (``rewards.caption_qa``). ``--data`` is JSON
lines in CapRL-QA's layout (``load_caption_qa``)::

    {"id": "scene-0", "image": "images/scene-0.png", "qa": [{"question": "How many shapes are there?",
     "choices": ["1", "2", "3"], "answer": "B"}], "caption": "2 shapes: ..."}

(``caption`` is optional: the reference caption, what a cold start trains on.) Predictions are JSON lines
``{"id", "output"[, "sample"]}``: several rows of one id with different ``sample`` numbers are N captions of the
image (``--model`` with ``--samples N`` samples them). Metrics:

* ``qa_accuracy``: mean over images of the mean accuracy of its captions;
* ``qa_accuracy_best_of_n``: mean over images of its best caption's accuracy (equal to the above for N = 1);
* ``words``: mean caption length in words; ``n`` images, ``samples`` captions per image, ``missing`` images
  without a caption (scored 0), ``unmatched`` prediction rows naming no record, ``judge_failures`` questions
  the judge failed to answer (counted wrong).
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.config import parse_key_values
from mmrl.errors import ConfigError, DataError
from mmrl.eval import predictions
from mmrl.eval.records import bad_field, get_field, get_file, get_id, id_rows
from rewards.caption_qa import MCQ, mcq_from_dict

KEYS = ("qa_accuracy", "qa_accuracy_best_of_n", "words", "n", "samples", "missing", "unmatched", "judge_failures")


@dataclass
class CaptionRecord:
    id: str
    image: str
    """Absolute path of the image."""
    qa: list[MCQ]
    caption: str | None = None
    """The reference caption, if the data has one."""


def load_caption_qa(path: str | Path) -> list[CaptionRecord]:
    """The records of a caption-QA JSONL (blank lines skipped); ``DataError`` naming the file, line and key for a
    malformed row, a missing or wrong-typed field, a bad question, a repeated id or a missing image."""
    path = Path(path)
    records = []
    for where, rid, raw in id_rows(path, "caption QA data"):
        image = get_file(raw, "image", path.parent, where)
        qa = get_field(raw, "qa", where)
        if not isinstance(qa, list):
            raise bad_field(where, "qa", "a list of questions", qa)
        mcqs = [mcq_from_dict(q, f"{where}: qa[{i}]") for i, q in enumerate(qa)]
        caption = raw.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise bad_field(where, "caption", "a string", caption)
        records.append(CaptionRecord(rid, str(image), mcqs, caption))
    return records


def _prediction_key(row: dict[str, Any], where: str) -> tuple[str, int]:
    rid, sample = get_id(row, where), row.get("sample", 0)
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
        raise bad_field(where, "sample", "a non-negative integer", sample)
    return rid, sample


def captions_by_record(records: list[CaptionRecord], found: dict[tuple[str, int], str]) -> list[list[str]]:
    """Each record's captions from prediction rows keyed ``(id, sample)``, in sample order."""
    by_id: dict[str, list[tuple[int, str]]] = {}
    for (rid, sample), text in found.items():
        by_id.setdefault(rid, []).append((sample, text))
    return [[text for _, text in sorted(by_id.get(r.id, []))] for r in records]


def evaluate(records: list[CaptionRecord], captions: list[list[str]], data: dict[str, Any] | None = None,
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics (``KEYS`` less ``unmatched``) and per-caption rows ``{"id", "sample", "accuracy", "words"}`` of
    ``captions`` (a list of captions per record; an empty list is a missing image, scored 0), judged by the task
    declaring ``caption_qa`` with ``data:`` settings ``data`` (e.g. ``{"judge": "rule"}``)."""
    from mmrl.config import ModelConfig
    from mmrl.task import opened, task_for_benchmark
    from mmrl.types import LoadContext

    defaults = ModelConfig()
    ctx = LoadContext(defaults.min_pixels, defaults.max_pixels, defaults.cache_dir)
    with opened(task_for_benchmark("caption_qa"), data or {}) as (task, cfg):
        samples = task.samples_from_records(records, cfg, ctx)
        flat = [(i, j, text) for i, texts in enumerate(captions) for j, text in enumerate(texts)]
        scores = task.score_batch([text for _, _, text in flat], [samples[i] for i, _, _ in flat])
        failures = task.judge_failures()
    per_image: list[list[float]] = [[] for _ in records]
    rows = []
    for (i, j, _), score in zip(flat, scores):
        per_image[i].append(score["qa_accuracy"])
        rows.append({"id": records[i].id, "sample": j, "accuracy": score["qa_accuracy"], "words": score["words"]})
    n = max(len(records), 1)
    metrics = {
        "qa_accuracy": sum(statistics.fmean(a) if a else 0.0 for a in per_image) / n,
        "qa_accuracy_best_of_n": sum(max(a, default=0.0) for a in per_image) / n,
        "words": statistics.fmean(r["words"] for r in rows) if rows else 0.0,
        "n": len(records), "samples": max((len(a) for a in per_image), default=0),
        "missing": sum(not a for a in per_image), "judge_failures": failures,
    }
    return metrics, rows


def _judge_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"judge": args.judge, "judge_args": parse_key_values(args.judge_arg, "--judge-arg")}


def _generate(records: list[CaptionRecord], args: argparse.Namespace, data: dict[str, Any]) -> list[list[str]]:
    from mmrl.config import ModelConfig
    from mmrl.eval.generate import benchmark_outputs

    outputs = benchmark_outputs("caption_qa", records, ModelConfig(path=args.model), data,
                                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                samples=args.samples, temperature=args.temperature)
    return [outputs[i * args.samples:(i + 1) * args.samples] for i in range(len(records))]


def format_table(result: dict[str, Any]) -> str:
    width = max(len(k) for k in KEYS)
    return "\n".join(f"{k.ljust(width)}  {(str(v) if isinstance(v, int) else f'{v:.4f}').rjust(8)}"
                     for k, v in ((k, result[k]) for k in KEYS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Captioning by QA (CapRL): a text-only judge answers each image's multiple-choice questions from the "
        "caption alone; prints the QA accuracy (mean and best-of-N over the captions of each image).")
    model = predictions.add_source_arguments(
        parser, data='JSON lines of {"id", "image", "qa": [{"question", "choices", "answer"}][, "caption"]}',
        outputs='JSONL of {"id": record id, "output": caption[, "sample": n]}',
        per_sample='write {"id", "sample", "accuracy", "words"} rows here', max_new_tokens=256)
    model.add_argument("--samples", type=int, default=1, help="captions per image (1: greedy; more: sampled)")
    model.add_argument("--temperature", type=float, default=1.0, help="sampling temperature when --samples > 1")
    parser.add_argument("--judge", default="rule", help="QA judge (mmrl list: QA judge; default rule, the "
                        "synthetic scenes' rule-based judge; hf: any chat causal LM, smollm2)")
    parser.add_argument("--judge-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a judge setting, e.g. path=Qwen/Qwen2.5-3B-Instruct or device=cuda:1 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """``mmrl eval caption_qa``: judge the captions, print the table, write ``--output`` and ``--per-sample``."""
    records = load_caption_qa(args.data)
    if not records:
        raise DataError(f"{args.data}: no records")
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    data = _judge_settings(args)
    unmatched = 0
    if args.model is not None:
        captions = _generate(records, args, data)
    else:
        found = predictions.read_predictions(args.predictions, _prediction_key)
        captions = captions_by_record(records, found)
        unmatched = len({rid for rid, _ in found} - {r.id for r in records})
    metrics, rows = evaluate(records, captions, data)
    result = {**metrics, "unmatched": unmatched}
    return predictions.report(args, format_table(result), result, rows)
