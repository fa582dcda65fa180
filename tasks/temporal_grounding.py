"""Video temporal grounding (Temporal-R1, "Envolving Temporal Reasoning Capability into LMMs via Temporal
Consistent Reward", 2025; TempSamp-R1, "Effective Temporal Sampling with Reinforcement Fine-Tuning for Video
LLMs", 2025).

Given a video and a sentence, the model answers when it happens: ``<answer>START to END</answer>`` in seconds,
optionally after a ``<think>...</think>`` block. Hybrid chain of thought: one model is trained on both modes;
each sample's mode is drawn once from its id (``think: hybrid``, probability ``think_ratio``), and the prompt
says which mode is expected. Rewards (``rewards.temporal``): temporal IoU of the clamped answer with the ground
truth, the format reward (the mode's template), and TempSamp-R1's soft IoU; Temporal-R1 weighs IoU and format
0.5 each, the default here.

Data: Charades-STA annotation files (``VIDEO_ID START END##sentence``, ``mmrl.eval.charades``) and a video
folder, or the seeded synthetic generator (``tasks.synthetic_video``), which writes real MP4 files and the same
annotation format into the cache. Each sample carries its video's duration and the timestamps of the frames the
model sees (``mmrl.vision.frame_times`` under the run's video budget), for the rewards and the viewer.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError, DataError
from mmrl.eval.charades import CharadesRecord, charades_metrics, load_annotations, resolve_videos
from mmrl.plugins import TASKS
from mmrl.store import atomic_write_text, cached_build
from mmrl.task import Task, hf_source
from mmrl.types import VIDEO_MARK, LoadContext, Sample
from mmrl.vision import VideoBudget, VideoInfo, frame_indices, frame_times
from rewards import temporal
from tasks import synthetic_video

THINK_MODES = ("never", "always", "hybrid")

PROMPT = (
    "{video}\nThe video lasts {duration:.1f} seconds. When does this happen: \"{sentence}\"? "
    "{instruction} Give the start and end seconds as <answer>START to END</answer>."
)
INSTRUCTIONS = {False: "Answer directly.", True: "Think first inside <think></think>, then answer."}
"""The mode sentence of the prompt: without and with a ``<think>`` block."""


@dataclass
class SyntheticVideoConfig:
    n_train: int = 400
    """Training videos to generate (one annotation line per event)."""
    n_eval: int = 100
    """Held-out videos (generated from seed + 1)."""
    seed: int = 0
    """Generator seed."""
    width: int = 56
    """Frame width in pixels."""
    height: int = 56
    """Frame height in pixels."""
    fps: int = 4
    """Frame rate of the written MP4 files."""
    duration: list[float] = field(default_factory=lambda: [8.0, 8.0])
    """Range [min, max] of video durations in seconds."""
    n_events: int = 1
    """Shapes (events) per video; each gets its own sentence and annotation line."""
    min_event: float = 1.5
    """Shortest event in seconds."""
    max_event: float | None = 3.0
    """Longest event in seconds (null: up to the whole video). Short events keep constant answers from scoring
    well."""
    time_step: float = 0.1
    """Grid of event starts and lengths in seconds (a multiple of 0.1)."""
    shape_scale: float = 0.3333
    """Shape side as a fraction of the frame width (capped by its lane's height)."""


@dataclass
class TemporalGroundingData:
    train: str | dict[str, Any] | None = None
    """Charades-STA annotation file for training, or a Hugging Face ``datasets`` source (a mapping,
    ``mmrl.hf_data.HFSource``: fields video (a file name whose stem is the video id), sentence, and interval
    ``[start, end]`` or start and end); unset = synthetic data."""
    eval: str | dict[str, Any] | None = None
    """The same for evaluation; unset = synthetic data."""
    video_dir: str | None = None
    """Folder of the videos (``VIDEO_ID.mp4`` etc.); default: ``videos/`` beside the annotation file (for a
    ``datasets`` source: its ``media_dir``, else the dataset's folder)."""
    think: str = "hybrid"
    """never: answer directly; always: think first; hybrid: per sample, think with probability think_ratio."""
    think_ratio: float = 0.5
    """Share of samples in thinking mode under ``think: hybrid``."""
    tau: float = 0.8
    """TempSamp-R1 soft-IoU threshold (the ``soft_iou`` reward; unconfirmed against the paper)."""
    alpha: float = 1.0
    """TempSamp-R1 soft-IoU steepness below ``tau``."""
    skip_bad_samples: bool = False
    """Skip annotation lines that are malformed or whose video is missing/unreadable, with a counted warning
    (default: the first one is an error naming the file and line)."""
    synthetic: SyntheticVideoConfig = field(default_factory=SyntheticVideoConfig)
    """Synthetic data settings (used for a split whose annotation file is unset)."""


def synthetic_annotations(cfg: SyntheticVideoConfig, split: str, cache_dir: str) -> Path:
    """Generate (once; cached by a hash of the settings) and return the synthetic annotation file of ``split``."""
    n, seed = (cfg.n_train, cfg.seed) if split == "train" else (cfg.n_eval, cfg.seed + 1)
    params = {**asdict(cfg), "split": split, "version": 4}
    build = partial(synthetic_video.generate, n_videos=n, seed=seed, width=cfg.width, height=cfg.height, fps=cfg.fps,
                    duration=tuple(cfg.duration), n_events=cfg.n_events, min_event=cfg.min_event,
                    max_event=cfg.max_event, time_step=cfg.time_step, shape_scale=cfg.shape_scale,
                    split_name=split)
    return cached_build(cache_dir, f"video_synthetic-{split}", params, f"charades_{split}.txt", build)


def thinks(record: CharadesRecord, cfg: TemporalGroundingData) -> bool:
    """Whether the query is in thinking mode: fixed by ``think``, or under ``hybrid`` a draw from a hash of the
    query (video, times, sentence), so it is the same in every run, process and exported subset."""
    if cfg.think != "hybrid":
        return cfg.think == "always"
    key = f"{record.video_id} {record.start:g} {record.end:g}##{record.sentence}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < cfg.think_ratio


def format_answer(start: float, end: float, think: bool) -> str:
    """The ground-truth completion as the policy should write it (the SFT target and TempSamp-R1's off-policy
    slot); in thinking mode a short templated rationale comes first (real data has no rationale to imitate:
    there, thinking is the policy's own, and the real recipes skip the cold start)."""
    answer = f"<answer>{temporal.format_interval(start, end)}</answer>"
    if not think:
        return answer
    return f"<think>visible from {start:.1f} s to {end:.1f} s</think>{answer}"


def to_sample(record: CharadesRecord, info: VideoInfo, cfg: TemporalGroundingData, budget: VideoBudget) -> Sample:
    """One query as a prompt over its (probed) video, with the fields the rewards and the viewer need."""
    think = thinks(record, cfg)
    return Sample(
        id=f"{Path(record.source_file).stem}:{record.id}",
        prompt=PROMPT.format(video=VIDEO_MARK, duration=info.duration, sentence=record.sentence,
                             instruction=INSTRUCTIONS[think]),
        videos=[info.path],
        answer=format_answer(record.start, record.end, think),
        fields={
            "gt_interval": [record.start, record.end],
            "duration": info.duration,
            "think": think,
            "frame_times": frame_times(info, frame_indices(info, budget)),
            "sentence": record.sentence,
            "video_id": record.video_id,
            "annotation": f"{record.source_file}:{record.line}",
        },
    )


def load_samples(path: Path, cfg: TemporalGroundingData, budget: VideoBudget) -> list[Sample]:
    """Samples of one annotation file; bad lines and videos raise ``DataError`` naming the file and line, or are
    skipped with one counted warning under ``skip_bad_samples``."""
    records, skipped = load_annotations(path, skip_bad=cfg.skip_bad_samples)
    video_dir = Path(cfg.video_dir) if cfg.video_dir else path.parent / "videos"
    return samples_of(records, skipped, video_dir, str(path), cfg, budget)


def samples_of(records: list[CharadesRecord], skipped: int, video_dir: Path, name: str, cfg: TemporalGroundingData,
               budget: VideoBudget) -> list[Sample]:
    """Samples of the records of ``name`` (a file or dataset) whose videos are in ``video_dir``; ``skipped``
    records were already left out."""
    kept, videos = resolve_videos(records, video_dir, skip_bad=cfg.skip_bad_samples)
    samples = [to_sample(r, videos[r.id], cfg, budget) for r in kept]
    skipped += len(records) - len(kept)
    if skipped:
        warnings.warn(f"{name}: skipped {skipped} bad annotation lines or videos (skip_bad_samples=true)",
                      stacklevel=3)
    if not samples:
        raise DataError(f"{name}: no usable annotation lines")
    return samples


@TASKS.register("temporal_grounding", config=TemporalGroundingData, renderer="video", benchmarks=("charades",),
                exports=True)
class TemporalGrounding(Task):
    """Task adapter for video temporal grounding on Charades-STA-format or synthetic data. Its benchmark records
    are ``(CharadesRecord, VideoInfo)`` pairs: a query and its probed video."""

    def load(self, split: str, cfg: TemporalGroundingData, ctx: LoadContext) -> list[Sample]:
        if cfg.think not in THINK_MODES:
            raise ConfigError(f"config key 'data.think': {cfg.think!r}; valid: {', '.join(THINK_MODES)}")
        if ctx.video is None:
            raise ConfigError("temporal_grounding needs the model's video settings (config key 'model.video')")
        hf = hf_source(split, cfg)
        if hf is not None:
            from mmrl.hf_data import Table, charades_records

            table = Table(hf, "temporal_grounding", ctx.cache_dir)
            video_dir = Path(cfg.video_dir) if cfg.video_dir else table.media_dir
            return samples_of(charades_records(table), 0, video_dir, table.name, cfg, ctx.video)
        path = cfg.train if split == "train" else cfg.eval
        source = Path(path) if path else synthetic_annotations(cfg.synthetic, split, ctx.cache_dir)
        return load_samples(source, cfg, ctx.video)

    def samples_from_records(self, records: list[tuple[CharadesRecord, VideoInfo]], cfg: TemporalGroundingData,
                             ctx: LoadContext) -> list[Sample]:
        """Samples of already-loaded Charades-STA records, each with its probed video."""
        return [to_sample(r, info, cfg, ctx.video) for r, info in records]

    def export(self, samples: list[Sample], path: Path) -> None:
        """Write ``samples`` as a Charades-STA annotation file (``VIDEO_ID START END##sentence``); their videos stay
        where they are, and the folder(s) holding them are printed for ``data.video_dir``."""
        lines = [f"{s.fields['video_id']} {s.fields['gt_interval'][0]:g} {s.fields['gt_interval'][1]:g}##"
                 f"{s.fields['sentence']}\n" for s in samples]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(lines))
        folders = sorted({str(Path(s.videos[0]).parent) for s in samples})
        print(f"videos of {path}: {', '.join(folders) or '(none)'} (set data.video_dir)")

    def reward_functions(self, cfg: TemporalGroundingData) -> dict:
        return {
            "iou": temporal.iou_reward,
            "soft_iou": partial(temporal.soft_iou_reward, tau=cfg.tau, alpha=cfg.alpha),
            "format": temporal.format_reward,
        }

    def default_rewards(self, cfg: TemporalGroundingData) -> dict[str, float]:
        """Temporal-R1: 0.5 tIoU + 0.5 format."""
        return {"iou": 0.5, "format": 0.5}

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        """Charades-STA numbers of one answer (``charades_metrics`` of its IoU: ``miou``, ``r1@m``) and ``parsed``."""
        iou = temporal.iou_reward([completion], gt_interval=[sample.fields["gt_interval"]],
                                  duration=[sample.fields["duration"]])[0]
        metrics = {k: float(v) for k, v in charades_metrics([iou]).items() if k != "n"}
        return {**metrics, "parsed": float(temporal.parse_interval(completion) is not None)}
