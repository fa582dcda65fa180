"""Charades-STA evaluation (video temporal grounding): parse each raw model output to a ``(start, end)`` interval
in seconds and score it by temporal IoU against the annotated moment.

Annotations: one query per line, ``VIDEO_ID START END##sentence`` (seconds), e.g.
``3MSZA 24.3 30.4##person turn a light on.``. A record's ``id`` is its 0-based line number in the file (blank
lines are skipped but keep their number), so ids stay stable when lines are skipped. Predictions are JSON lines
``{"id": N, "output": "raw model text"}``.

Scoring: ``rewards.temporal.parse_interval`` (the parser the training rewards use), then the temporal IoU with
the annotated moment; a reversed answer (start > end) scores 0. How the answer is clamped depends on whether the
videos are given:

* with ``--videos``: ``rewards.temporal.answer_iou``, as the training reward: the answer is clamped into
  ``[0, video duration]`` (durations from the video files);
* without ``--videos`` (scoring ``--predictions`` needs no media): the parsed interval is scored as written, with
  NO clamping at all, not even at 0 (``rewards.temporal.temporal_iou``), so an answer reaching past either end
  of the video scores lower than it would with the videos. ``clamped`` in the result says which applied.

An unparsable output and a missing output count as IoU 0 (counted in ``unparsable`` and ``missing``).
Metrics over all ``n`` queries: ``r1@0.3``, ``r1@0.5``, ``r1@0.7``, the fraction whose (single, top-1) answer has
IoU >= the threshold, and ``miou``, the mean IoU; all in [0, 1], 0 when there are no queries.

Videos are ``VIDEO_DIR/VIDEO_ID.EXT`` (``VIDEO_EXTENSIONS``, lower or upper case); durations come from
``mmrl.vision.probe_video``, once per video. ``--videos`` is required with ``--model`` and optional with
``--predictions``. With ``--skip-bad-samples``, malformed annotation lines and the queries of missing or
unreadable videos are left out of ``n`` and counted in ``skipped_lines`` and ``skipped_queries``; without it they
are errors.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError, DataError
from mmrl.eval import predictions
from mmrl.eval.records import read_lines
from mmrl.store import write_json_atomic
from mmrl.vision import VideoInfo, probe_video
from rewards.temporal import answer_iou, parse_interval, temporal_iou

THRESHOLDS = (0.3, 0.5, 0.7)
VIDEO_EXTENSIONS = ("mp4", "avi", "mkv", "webm", "mov", "m4v")
_EXPECTED = "expected 'VIDEO_ID START END##sentence'"


@dataclass(frozen=True)
class CharadesRecord:
    """One query: the moment ``[start, end]`` (seconds) of ``video_id`` that ``sentence`` describes."""

    id: int
    """0-based line number in the annotation file."""
    video_id: str
    start: float
    end: float
    sentence: str
    source_file: str
    line: int
    """1-based line number, for messages."""


def _parse_record(path: Path, index: int, text: str) -> CharadesRecord:
    """The record on 0-based line ``index``; ``DataError`` naming the file, line and reason if malformed."""

    def malformed(reason: str) -> DataError:
        return DataError(f"{path}:{index + 1}: malformed annotation line {text!r} ({_EXPECTED}): {reason}")

    head, sep, sentence = text.partition("##")
    if not sep:
        raise malformed("no '##' before the sentence")
    fields = head.split()
    if len(fields) != 3:
        raise malformed(f"{len(fields)} fields before '##', expected 3")
    video_id, *times = fields
    try:
        start, end = (float(t) for t in times)
    except ValueError:
        raise malformed("START and END must be numbers") from None
    if not (math.isfinite(start) and math.isfinite(end)):
        raise malformed("START and END must be finite")
    if start < 0:
        raise malformed(f"negative START {start:g}")
    if start > end:
        raise malformed(f"START {start:g} is after END {end:g}")
    if not sentence.strip():
        raise malformed("empty sentence")
    return CharadesRecord(index, video_id, start, end, sentence.strip(), str(path), index + 1)


def load_annotations(path: str | Path, skip_bad: bool = False) -> tuple[list[CharadesRecord], int]:
    """The records of a Charades-STA annotation file and how many malformed lines were skipped. Without
    ``skip_bad`` a malformed line raises ``DataError`` (so the count is 0); a file without any line is a
    ``DataError`` either way."""
    path = Path(path)
    records: list[CharadesRecord] = []
    skipped = 0
    lines = read_lines(path, "annotation")
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: no annotation lines (an empty file)")
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(_parse_record(path, index, line.strip()))
        except DataError:
            if not skip_bad:
                raise
            skipped += 1
    return records, skipped


def read_annotations(path: str | Path) -> list[CharadesRecord]:
    """The records of a Charades-STA annotation file; ``DataError`` for a missing file or a malformed line."""
    return load_annotations(path)[0]


def find_video(video_dir: str | Path, video_id: str) -> Path:
    """The first existing ``video_dir/VIDEO_ID.EXT`` for EXT in ``VIDEO_EXTENSIONS``, then the same upper-case."""
    video_dir = Path(video_dir)
    extensions = [*VIDEO_EXTENSIONS, *(e.upper() for e in VIDEO_EXTENSIONS)]
    for ext in extensions:
        path = video_dir / f"{video_id}.{ext}"
        if path.is_file():
            return path
    raise DataError(f"video {video_id!r} not found in {video_dir} (tried extensions: {', '.join(extensions)})")


def resolve_videos(
    records: list[CharadesRecord], video_dir: str | Path, skip_bad: bool = False
) -> tuple[list[CharadesRecord], dict[int, VideoInfo]]:
    """The records kept and the probed video of each by record id; each video is found and probed once. A missing
    or unreadable video raises ``DataError`` naming the annotation file and line of its first query, or with
    ``skip_bad`` drops its queries."""
    firsts: dict[str, CharadesRecord] = {}
    for record in records:
        firsts.setdefault(record.video_id, record)
    found: dict[str, VideoInfo] = {}
    for video_id, first in firsts.items():
        try:
            found[video_id] = probe_video(find_video(video_dir, video_id))
        except DataError as exc:
            if not skip_bad:
                raise DataError(f"{first.source_file}:{first.line}: {exc}") from None
    kept = [r for r in records if r.video_id in found]
    return kept, {r.id: found[r.video_id] for r in kept}


def charades_metrics(ious: list[float]) -> dict[str, Any]:
    """``r1@0.3``, ``r1@0.5``, ``r1@0.7`` (fraction of IoUs >= the threshold), ``miou`` (mean) and ``n``."""
    denominator = max(len(ious), 1)
    metrics: dict[str, Any] = {f"r1@{t}": sum(iou >= t for iou in ious) / denominator for t in THRESHOLDS}
    metrics["miou"] = sum(ious) / denominator
    metrics["n"] = len(ious)
    return metrics


def interval_iou(interval: tuple[float, float] | None, record: CharadesRecord, duration: float | None) -> float:
    """IoU of a parsed answer (``None``: 0) with the record's moment: clamped into ``[0, duration]`` as the
    training reward does (``answer_iou``) when the video's ``duration`` is known, scored as written (no clamping
    at all) when it is ``None``; a reversed answer scores 0 either way."""
    if interval is None:
        return 0.0
    if duration is None:
        return temporal_iou(interval, (record.start, record.end))
    return answer_iou(interval, (record.start, record.end), duration)


def score_predictions(
    records: list[CharadesRecord], outputs: dict[int, str], durations: dict[int, float] | None = None
) -> dict[str, Any]:
    """``charades_metrics`` of the raw ``outputs`` (record id -> model text) plus the ``unparsable`` and
    ``missing`` counts. Answers are clamped into the record's video duration (``durations``: record id ->
    seconds); a record without one (all of them when ``durations`` is ``None``) is scored unclamped."""
    durations = durations or {}
    ious: list[float] = []
    unparsable = missing = 0
    for record in records:
        output = outputs.get(record.id)
        interval = None if output is None else parse_interval(output)
        missing += output is None
        unparsable += output is not None and interval is None
        ious.append(interval_iou(interval, record, durations.get(record.id)))
    return {**charades_metrics(ious), "unparsable": unparsable, "missing": missing}


def _record_id(row: dict[str, Any], where: str) -> int:
    if not isinstance(row["id"], int) or isinstance(row["id"], bool):
        raise DataError(f"{where}: field 'id' must be an integer (the 0-based annotation line number)")
    return row["id"]


def read_predictions(path: str | Path) -> dict[int, str]:
    """``{id: raw output}`` from a JSONL file of ``{"id": N, "output": "raw model text"}`` rows (blank lines
    skipped); ``DataError`` naming the file and 1-based line for a malformed row or a repeated id."""
    return predictions.read_predictions(path, _record_id)


def format_table(result: dict[str, Any]) -> str:
    """R1@0.3/0.5/0.7 and mIoU in percent, with the counts, as two right-aligned rows."""
    percents = [*(f"r1@{t}" for t in THRESHOLDS), "miou"]
    counts = [k for k in ("n", "unparsable", "missing", "skipped_lines", "skipped_queries") if k in result]
    header = [*(f"R1@{t}" for t in THRESHOLDS), "mIoU", *counts]
    values = [*(f"{100 * result[k]:.1f}" for k in percents), *(str(result[k]) for k in counts)]
    widths = [max(len(h), len(v)) for h, v in zip(header, values)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in (header, values))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mmrl eval charades``."""
    from mmrl import hf_data  # imports this module: not at the top

    annotations = parser.add_mutually_exclusive_group(required=True)
    annotations.add_argument("--annotations", help="Charades-STA file of 'VIDEO_ID START END##sentence'")
    annotations.add_argument("--data", help="or a Hugging Face dataset: a Hub id (hf: prefix optional), a "
                                            ".parquet/.arrow/.jsonl file or a save_to_disk folder (fields video, "
                                            "sentence, interval; preset lmms-lab/charades_sta)")
    hf_data.add_cli_arguments(parser)
    parser.add_argument(
        "--videos",
        help="folder of VIDEO_ID.mp4 (or .avi, .mkv, .webm, .mov, .m4v); required with --model. With "
             "--predictions it is optional: given, answers are clamped into [0, video duration] as in training; "
             "left out, no video is opened and the parsed intervals are scored as written, with no clamping "
             "at all (not even at 0)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help='JSONL of {"id": 0-based annotation line, "output": raw model text}')
    source.add_argument("--model", help="checkpoint to generate the outputs with")
    parser.add_argument("--output", help="write the metrics JSON to this file")
    parser.add_argument(
        "--skip-bad-samples", action="store_true",
        help="leave out malformed annotation lines and queries whose video is missing or unreadable",
    )
    model = parser.add_argument_group("generation with --model (use the budget the model was trained with)")
    model.add_argument("--think", default="never", choices=["never", "always", "hybrid"],
                       help="prompt mode: answer directly, think first, or per query as in training")
    model.add_argument("--max-new-tokens", type=int, default=256, help="completion length cap (default 256)")
    model.add_argument("--batch-size", type=int, default=8, help="queries per generation batch (default 8)")
    model.add_argument("--video", nargs="*", default=[], metavar="KEY=VALUE",
                       help="video budget overrides, e.g. fps=2 max_frames=16 min_pixels=3136 max_pixels=3136 "
                            "total_pixels=50176 (keys of model.video; defaults: mmrl.vision.VideoBudget)")


def video_budget(overrides: list[str]):
    """The ``VideoBudget`` of ``--video key=value ...`` (checked like config overrides: unknown keys are named)."""
    from mmrl.config import build, parse_overrides
    from mmrl.vision import VideoBudget

    return build(VideoBudget, parse_overrides(overrides), prefix="--video ")


def load_queries(args: argparse.Namespace) -> tuple[list[CharadesRecord], int]:
    """The records of ``--annotations``, or of the ``datasets`` source ``--data``, and the lines skipped."""
    if args.data is None:
        return load_annotations(args.annotations, skip_bad=args.skip_bad_samples)
    from mmrl import hf_data

    return hf_data.cli_records("temporal_grounding", args, always=True), 0


def run(args: argparse.Namespace) -> int:
    """Score ``--predictions`` (or outputs generated by ``--model``), print the table, return 0."""
    if args.model is not None and args.videos is None:
        raise ConfigError("--videos is required with --model (the videos are the model's input)")
    records, skipped_lines = load_queries(args)
    if args.videos is None:  # --predictions only: no media, no durations, no clamping
        kept, videos = records, {}
    else:
        kept, videos = resolve_videos(records, args.videos, skip_bad=args.skip_bad_samples)
    if args.model is not None:
        from mmrl.config import ModelConfig
        from mmrl.eval.generate import benchmark_outputs

        texts = benchmark_outputs("charades", [(r, videos[r.id]) for r in kept],
                                  ModelConfig(path=args.model, video=video_budget(args.video)), {"think": args.think},
                                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        outputs = {r.id: text for r, text in zip(kept, texts)}
    else:
        outputs = read_predictions(args.predictions)
    result = score_predictions(kept, outputs, {i: info.duration for i, info in videos.items()})
    result.update(skipped_lines=skipped_lines, skipped_queries=len(records) - len(kept),
                  clamped=args.videos is not None)
    print(format_table(result))
    if args.output is not None:
        write_json_atomic(args.output, result)
    return 0
