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

from mmrl.checkpoint import load_trainable_state
from mmrl.diffusion.pipeline import DiffusionPolicy
from mmrl.diffusion.samplers import rollout
from mmrl.errors import DataError


@torch.no_grad()
def sample_images(policy: DiffusionPolicy, prompts: list[str], steps: int, resolution: int,
                  guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
    """One image per prompt with the deterministic sampler, in [0, 1], shape ``[len(prompts), 3, R, R]``."""
    denoise = policy.denoiser_fn(policy.encode(prompts), guidance_scale)
    noise = policy.noise(len(prompts), resolution, generator)
    return policy.decode(rollout(denoise, policy.sampler(steps, 0.0), noise).final)


def apply_trained(policy: DiffusionPolicy, run_dir: str | Path) -> None:
    """Load a run's ``final/trainable.safetensors`` into ``policy``'s denoiser (built with the run's config)."""
    from safetensors.torch import load_file

    from mmrl.diffusion.trainer import FINAL_WEIGHTS

    path = Path(run_dir) / "final" / FINAL_WEIGHTS
    if not path.is_file():
        raise DataError(f"{path} not found: is {run_dir} a finished diffusion run?")
    load_trainable_state(policy.denoiser, load_file(str(path)))


def to_png(image: torch.Tensor, path: Path) -> None:
    """Save one ``[3, H, W]`` image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()).save(path)


def write_samples(policy: DiffusionPolicy, records: list[dict], out: str | Path, per_prompt: int, steps: int,
                  resolution: int, guidance_scale: float, seed: int, batch_size: int = 16,
                  progress: bool = True) -> Path:
    """``per_prompt`` images for each record ``{"prompt": ...}`` into GenEval's layout under ``out``."""
    out = Path(out)
    generator = torch.Generator().manual_seed(seed)
    for index, record in enumerate(tqdm(records, desc="sampling", disable=not progress)):
        folder = out / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n")
        for start in range(0, per_prompt, batch_size):
            count = min(batch_size, per_prompt - start)
            images = sample_images(policy, [record["prompt"]] * count, steps, resolution, guidance_scale, generator)
            for k, image in enumerate(images):
                to_png(image, folder / "samples" / f"{start + k:04d}.png")
    return out
