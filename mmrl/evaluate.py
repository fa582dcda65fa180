"""Decoding a policy on a task's samples, greedy or sampled (``mmrl.task.score_outputs`` grades them)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mmrl.data import MediaCache
from mmrl.rollout.hf import generate
from mmrl.types import Sample


def generate_outputs(
    model, processor, samples: list[Sample], media: MediaCache, *, batch_size: int, max_new_tokens: int,
    suppress_ids: list[int], progress: bool = True, desc: str = "eval", temperature: float | None = None,
) -> list[str]:
    """Completions for ``samples``, in order: greedy, or sampled at ``temperature`` when it is given."""
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in tqdm(range(0, len(samples), batch_size), desc=desc, disable=not progress, leave=False):
            chunk = samples[i : i + batch_size]
            batch = media.encode(processor, chunk).to(device)
            out = generate(model, processor, batch, max_new_tokens=max_new_tokens, do_sample=temperature is not None,
                           temperature=temperature or 1.0, suppress_ids=suppress_ids)
            outputs.extend(out.texts)
    model.train(was_training)
    return outputs
