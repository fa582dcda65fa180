"""What a diffusion run leaves on disk for others to read: the trained weights and PNG images.

The trainer writes them (``save_final``, ``to_png``), the sampler reads them back (``apply_trained``) and writes
images the same way; neither imports the other.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmrl import checkpoint
from mmrl.diffusion.policy import DiffusionPolicy
from mmrl.errors import DataError
from mmrl.store import RunDir, publish_dir

FINAL_WEIGHTS = "trainable.safetensors"
"""File under ``OUTPUT_DIR/final`` holding the trained denoiser weights (LoRA adapters or all weights)."""


def save_final(run: RunDir, denoiser: torch.nn.Module) -> Path:
    """``final/trainable.safetensors``: the trained weights, written atomically (``apply_trained`` loads them)."""
    tmp, out = run.root / ".final.tmp", run.root / "final"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.trainable_state(denoiser).items()}, tmp / FINAL_WEIGHTS)
    publish_dir(tmp, out)
    return out


def apply_trained(policy: DiffusionPolicy, run_dir: str | Path) -> None:
    """Load a run's ``final/trainable.safetensors`` into ``policy``'s denoiser (built with the run's config)."""
    path = Path(run_dir) / "final" / FINAL_WEIGHTS
    if not path.is_file():
        raise DataError(f"{path} not found: is {run_dir} a finished diffusion run?")
    checkpoint.load_trainable_state(policy.denoiser, load_file(str(path)))


def to_png(image: torch.Tensor, path: Path) -> None:
    """Save one ``[3, H, W]`` image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()).save(path)
