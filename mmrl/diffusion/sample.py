"""Deterministic sampling to image files: ``mmrl diffusion sample``.

Images are written in GenEval's layout, so the folder feeds GenEval-style scoring directly:
``OUT/00000/metadata.jsonl`` (the prompt's record) and ``OUT/00000/samples/0000.png ...``, one folder per
prompt. Sampling is the evaluation sampler: DDIM with η = 0 or the flow ODE (Euler), ``steps`` steps.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmrl.diffusion.artifacts import to_png
from mmrl.diffusion.policy import DiffusionPolicy
from mmrl.diffusion.samplers import rollout


@torch.no_grad()
def sample_images(policy: DiffusionPolicy, prompts: list[str], steps: int, resolution: int,
                  guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
    """One image per prompt with the deterministic sampler, in [0, 1], shape ``[len(prompts), 3, R, R]``."""
    denoise = policy.denoiser_fn(policy.encode(prompts), guidance_scale)
    noise = policy.noise(len(prompts), resolution, generator)
    return policy.decode(rollout(denoise, policy.sampler(steps, 0.0), noise).final)


def write_samples(policy: DiffusionPolicy, records: list[dict], out: str | Path, per_prompt: int, steps: int,
                  resolution: int, guidance_scale: float, seed: int, batch_size: int = 16,
                  progress: bool = True) -> Path:
    """``per_prompt`` images for each record ``{"prompt": ...}`` into GenEval's layout under ``out``."""
    out = Path(out)
    generator = torch.Generator().manual_seed(seed)
    for index, record in enumerate(tqdm(records, desc="sampling", disable=not progress)):
        folder = prompt_folder(out, index, record)
        for start in range(0, per_prompt, batch_size):
            count = min(batch_size, per_prompt - start)
            images = sample_images(policy, [record["prompt"]] * count, steps, resolution, guidance_scale, generator)
            for k, image in enumerate(images):
                to_png(image, folder / "samples" / f"{start + k:04d}.png")
    return out


def prompt_folder(out: str | Path, index: int, record: dict) -> Path:
    """``OUT/{index:05d}/`` of GenEval's layout with its ``metadata.jsonl`` (the prompt's record) and an empty
    ``samples/``, where the images go as ``samples/0000.png ...``."""
    folder = Path(out) / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n")
    return folder
