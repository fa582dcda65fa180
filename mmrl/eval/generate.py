"""Generate benchmark outputs with a checkpoint (``mmrl eval ... --model PATH``), with the prompts training uses.

The evaluator names its benchmark; the task that declares that benchmark (``benchmarks`` capability) turns the
records into samples, so the prompts are exactly the ones the task trains with.
"""
from __future__ import annotations

from typing import Any

import torch

from mmrl.config import ModelConfig
from mmrl.data import load_context, media_cache
from mmrl.evaluate import generate_outputs
from mmrl.models.load import load_policy, model_family, placeholder_ids
from mmrl.task import opened, task_for_benchmark
from mmrl.types import Sample


def model_outputs(cfg: ModelConfig, samples: list[Sample], family: str, *, batch_size: int, max_new_tokens: int,
                   progress: bool = True, temperature: float | None = None) -> list[str]:
    """Greedy completions of the checkpoint ``cfg.path`` (of model ``family``) for ``samples``, in order (sampled
    at ``temperature`` when it is given)."""
    model, processor, _ = load_policy(cfg)
    return generate_outputs(model, processor, samples, media_cache(cfg, family), batch_size=batch_size,
                            max_new_tokens=max_new_tokens, suppress_ids=placeholder_ids(processor.tokenizer),
                            progress=progress, desc="generate", temperature=temperature)


def benchmark_outputs(benchmark: str, records: list, model: ModelConfig, data: dict[str, Any] | None = None, *,
                      batch_size: int = 16, max_new_tokens: int = 32, progress: bool = True, samples: int = 1,
                      temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Outputs of the checkpoint ``model.path`` for ``benchmark`` records, in order, prompted as the task that
    declares ``benchmark`` trains (its ``data:`` settings ``data``, e.g. ``{"answer_format": "point"}``): one greedy
    output per record, or ``samples`` > 1 consecutive outputs per record sampled at ``temperature`` (seeded)."""
    family = model_family(model)
    with opened(task_for_benchmark(benchmark), data or {}) as (task, cfg):
        prompts = task.samples_from_records(records, cfg, load_context(model, family))
    if samples == 1:
        return model_outputs(model, prompts, family, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              progress=progress)
    torch.manual_seed(seed)
    return model_outputs(model, [p for p in prompts for _ in range(samples)], family, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, progress=progress, temperature=temperature)
