"""Generate benchmark outputs with a checkpoint (``mmrl eval ... --model PATH``), with the prompts training uses.

The evaluator names its benchmark; the task that declares that benchmark (``benchmarks`` capability) turns the
records into samples, so the prompts are exactly the ones the task trains with.
"""
from __future__ import annotations

from typing import Any

from mmrl.config import ModelConfig
from mmrl.data import load_context, media_cache
from mmrl.evaluate import generate_outputs
from mmrl.models.load import load_policy, model_family, placeholder_ids
from mmrl.task import opened, task_for_benchmark
from mmrl.types import Sample


def greedy_outputs(cfg: ModelConfig, samples: list[Sample], family: str, *, batch_size: int, max_new_tokens: int,
                   progress: bool = True) -> list[str]:
    """Greedy completions of the checkpoint ``cfg.path`` (of model ``family``) for ``samples``, in order."""
    model, processor, _ = load_policy(cfg)
    return generate_outputs(model, processor, samples, media_cache(cfg, family), batch_size=batch_size,
                            max_new_tokens=max_new_tokens, suppress_ids=placeholder_ids(processor.tokenizer),
                            progress=progress, desc="generate")


def benchmark_outputs(benchmark: str, records: list, model: ModelConfig, data: dict[str, Any] | None = None, *,
                      batch_size: int = 16, max_new_tokens: int = 32, progress: bool = True) -> list[str]:
    """Greedy outputs of the checkpoint ``model.path`` for ``benchmark`` records, in order, prompted as the task
    that declares ``benchmark`` trains (its ``data:`` settings ``data``, e.g. ``{"answer_format": "point"}``)."""
    family = model_family(model)
    with opened(task_for_benchmark(benchmark), data or {}) as (task, cfg):
        samples = task.samples_from_records(records, cfg, load_context(model, family))
    return greedy_outputs(model, samples, family, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          progress=progress)
