"""Generate benchmark outputs with a checkpoint (``mmrl eval ... --model PATH``)."""
from __future__ import annotations

from pathlib import Path

from mmrl.config import ModelConfig
from mmrl.data import ImageCache
from mmrl.evaluate import generate_outputs
from mmrl.models.load import load_policy, placeholder_ids
from mmrl.registry import get_task
from mmrl.types import LoadContext


def generate_for_records(model_path: str, records, *, min_pixels: int | None, max_pixels: int | None,
                         answer_format: str = "point", batch_size: int = 16, max_new_tokens: int = 32,
                         progress: bool = True) -> dict[tuple[str, str], str]:
    """Greedy outputs of ``model_path`` for ScreenSpot ``records``, keyed by ``(annotation file name, id)``.

    Prompts are the GUI grounding task's (the ones training uses), so the model answers in the pixels of the
    image it saw: score the result with ``coords="resized"`` and the same pixel budget.
    """
    defaults = ModelConfig()
    cfg = ModelConfig(path=model_path, min_pixels=min_pixels or defaults.min_pixels,
                      max_pixels=max_pixels or defaults.max_pixels)
    model, processor, _ = load_policy(cfg)
    task = get_task("gui_grounding")
    data_cfg = task.config_class(answer_format=answer_format)
    ctx = LoadContext(cfg.min_pixels, cfg.max_pixels, cfg.cache_dir)
    samples = task.samples_from_records(records, data_cfg, ctx)
    texts = generate_outputs(model, processor, samples, ImageCache(cfg.min_pixels, cfg.max_pixels),
                             batch_size=batch_size, max_new_tokens=max_new_tokens,
                             suppress_ids=placeholder_ids(processor.tokenizer), progress=progress, desc="generate")
    return {(Path(r.source_file).name, r.id): t for r, t in zip(records, texts)}
