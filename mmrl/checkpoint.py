"""Atomic checkpoints and exact resume.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding ``state.pt`` (trainable parameters — the LoRA
adapters, or every weight in full fine-tuning — optimizer, LR scheduler, trainer state such as the data
position) and one ``rng-rankK.pt`` per process (Python, NumPy, torch CPU/CUDA generator states). It is written
into a hidden temporary folder that is renamed into place only when complete, so a run killed mid-write
leaves the previous checkpoint intact and never a half one.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrl.store import publish_dir

PATTERN = re.compile(r"^step-(\d{6})$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (adapters only under LoRA), detached on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every trainable parameter's bytes: equal on all ranks when data-parallel training is in sync."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root/checkpoints``, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.match(p.name) and (p / "state.pt").is_file())


def latest(root: str | Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def save(root, step: int, model, optimizer, scheduler, trainer_state: dict, accelerator, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically from every process (RNG per rank; the rest from the main one)."""
    folder = Path(root) / "checkpoints"
    final = folder / f"step-{step:06d}"
    tmp = folder / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        state = {
            "model": trainable_state(accelerator.unwrap_model(model)),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "trainer": trainer_state,
        }
        torch.save(state, tmp / "state.pt.part")
        os.replace(tmp / "state.pt.part", tmp / "state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_dir(tmp, final)
        for old in checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(path: Path, model, optimizer, scheduler, accelerator) -> dict:
    """Restore a checkpoint written by ``save``; returns the trainer state dict."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    load_trainable_state(accelerator.unwrap_model(model), state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(torch.load(path / f"rng-rank{accelerator.process_index}.pt", weights_only=False))
    return state["trainer"]
