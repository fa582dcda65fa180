"""Generate benchmark outputs with a checkpoint (``mmrl eval ... --model PATH``), with the prompts training uses."""
from __future__ import annotations

from pathlib import Path

from mmrl.config import ModelConfig
from mmrl.data import load_context, media_cache
from mmrl.evaluate import generate_outputs
from mmrl.models.load import load_policy, placeholder_ids
from mmrl.types import Sample
from mmrl.vision import VideoBudget, VideoInfo


def greedy_outputs(cfg: ModelConfig, samples: list[Sample], *, batch_size: int, max_new_tokens: int,
                   progress: bool = True) -> list[str]:
    """Greedy completions of the checkpoint ``cfg.path`` for ``samples``, in order."""
    model, processor, _ = load_policy(cfg)
    return generate_outputs(model, processor, samples, media_cache(cfg), batch_size=batch_size,
                            max_new_tokens=max_new_tokens, suppress_ids=placeholder_ids(processor.tokenizer),
                            progress=progress, desc="generate")


def generate_for_records(model_path: str, records, *, min_pixels: int | None, max_pixels: int | None,
                         answer_format: str = "point", batch_size: int = 16, max_new_tokens: int = 32,
                         progress: bool = True) -> dict[tuple[str, str], str]:
    """Greedy outputs of ``model_path`` for ScreenSpot ``records``, keyed by ``(annotation file name, id)``.

    Prompts are the GUI grounding task's (the ones training uses), so the model answers in the pixels of the
    image it saw: score the result with ``coords="resized"`` and the same pixel budget.
    """
    from mmrl.registry import get_task

    defaults = ModelConfig()
    cfg = ModelConfig(path=model_path, min_pixels=min_pixels or defaults.min_pixels,
                      max_pixels=max_pixels or defaults.max_pixels)
    task = get_task("gui_grounding")
    samples = task.samples_from_records(records, task.config_class(answer_format=answer_format), load_context(cfg))
    texts = greedy_outputs(cfg, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    return {(Path(r.source_file).name, r.id): t for r, t in zip(records, texts)}


def generate_charades(model_path: str, records, videos: dict[int, VideoInfo], *, video: VideoBudget | None = None,
                      think: str = "never", batch_size: int = 8, max_new_tokens: int = 256,
                      progress: bool = True) -> dict[int, str]:
    """Greedy outputs of ``model_path`` for Charades-STA ``records`` (probed videos by record id), keyed by id.

    Prompts are the temporal grounding task's, in ``think`` mode (never, always or hybrid as in training), and
    videos are read under ``video`` (default ``VideoBudget()``: fps 2, qwen-vl-utils' pixel bounds).
    """
    from mmrl.registry import get_task

    cfg = ModelConfig(path=model_path, video=video or VideoBudget())
    task = get_task("temporal_grounding")
    samples = task.samples_from_records(records, videos, task.config_class(think=think), load_context(cfg))
    texts = greedy_outputs(cfg, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    return {r.id: t for r, t in zip(records, texts)}
