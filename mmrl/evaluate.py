"""Decoding a policy on a task's samples, greedy or sampled (``mmrl.task.score_outputs`` grades them).

Under several processes (``accelerate launch``) each rank decodes every ``world``-th sample and the outputs are
gathered back into the samples' order on every rank, so evaluation takes ``1/world`` of the time; in one process
nothing changes.
"""
from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from mmrl.data import MediaCache
from mmrl.rollout.hf import generate
from mmrl.types import Sample


def process_state() -> PartialState:
    """This process's place among those ``accelerate launch`` started (the trainer's accelerator sets it up the
    same way). ``cpu`` without CUDA: otherwise a CPU rank finds no device and takes itself for the only process."""
    return PartialState(cpu=not torch.cuda.is_available())


def generate_outputs(
    model, processor, samples: list[Sample], media: MediaCache, *, batch_size: int, max_new_tokens: int,
    suppress_ids: list[int], progress: bool = True, desc: str = "eval", temperature: float | None = None,
) -> list[str]:
    """Completions for ``samples``, in order: greedy, or sampled at ``temperature`` when it is given (sampled
    outputs then depend on the number of processes, each rank drawing from its own generator state)."""
    state = process_state()
    mine = samples[state.process_index::state.num_processes]
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in tqdm(range(0, len(mine), batch_size), desc=desc, disable=not (progress and state.is_main_process),
                      leave=False):
            batch = media.encode(processor, mine[i : i + batch_size]).to(device)
            out = generate(model, processor, batch, max_new_tokens=max_new_tokens, do_sample=temperature is not None,
                           temperature=temperature or 1.0, suppress_ids=suppress_ids)
            outputs.extend(out.texts)
    model.train(was_training)
    return interleave(gather_object([outputs]), len(samples)) if state.num_processes > 1 else outputs


def interleave(parts: list[list[str]], n: int) -> list[str]:
    """Sample ``i``'s output from the per-rank lists (rank ``i % world`` decoded it, as its ``i // world``-th)."""
    return [parts[i % len(parts)][i // len(parts)] for i in range(n)]
