"""Atomic checkpoints and exact resume, through accelerate's state API.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` written by ``Accelerator.save_state`` and read back by
``Accelerator.load_state``, so where the state is sharded accelerate's engine code saves and restores it (FSDP's model
and optimizer, gathered or per rank as the plugin's ``state_dict_type`` says; DeepSpeed ZeRO's partitions, per rank).
It holds

- the prepared model's trainable parameters (``model.safetensors``) and the optimizer (``optimizer.bin``), or the
  engine's files under FSDP / DeepSpeed;
- the objects given to ``register`` (``custom_checkpoint_K.pkl``): the LR scheduler, and for a model that is not
  prepared (the diffusion trainer averages its gradients itself) its ``Trainable`` weights and its optimizer;
- one ``random_states_K.pkl`` per rank (Python, NumPy, torch CPU/CUDA generators);
- ``trainer_state.pt`` from the main process (step, advantage state, prompt sampler: whatever the trainer passes).

Why only the trainable parameters: accelerate saves a replicated model's whole ``state_dict``, under LoRA the frozen
base too (6.7 MB instead of 0.6 MB a checkpoint for the tiny Qwen2.5-VL with r=4 adapters); resume rebuilds the
base from the run's starting model anyway. So a save hook keeps, of each replicated model, the parameters with
``requires_grad`` (named as in the unwrapped model, so the file does not depend on the number of processes), and a
load hook loads them, checking that they match the model.
Sharded models never reach these hooks (accelerate hands them only the replicated ones): their engines write the
whole model, frozen weights included, in their own format: correct, not adapter-sized.

The folder is written into a hidden ``.tmp-step-NNNNNN`` and renamed into place when every rank has finished, so a
run killed mid-write leaves the previous checkpoint intact and never a half one; the last ``keep`` are kept.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import SAFE_MODEL_NAME, extract_model_from_parallel
from safetensors.torch import load_file

from mmrl.errors import ConfigError
from mmrl.store import publish_dir

PATTERN = re.compile(r"^step-(\d{6})$")
TRAINER_STATE = "trainer_state.pt"


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
    missing = sorted({n for n, p in params.items() if p.requires_grad} - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


class Trainable:
    """A model's trainable parameters as an object accelerate can checkpoint (``register``), for a model that is
    not prepared."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state(self.model, state)


def weights_file(index: int) -> str:
    """accelerate's name for the ``index``-th replicated model's weights in a ``save_state`` folder."""
    return f"{SAFE_MODEL_NAME}{f'_{index}' if index else ''}.safetensors"


def keep_trainable(models: list, weights: list[dict], _folder: str) -> None:
    """Save hook: replace each replicated model's state dict (``weights``, aligned with ``models``; empty under
    FSDP/DeepSpeed) by its trainable parameters."""
    for model, state in zip(models, weights):
        state.clear()
        state.update(trainable_state(extract_model_from_parallel(model)))


def load_trainable(models: list, folder: str) -> None:
    """Load hook: load each replicated model's trainable parameters, then empty ``models`` so accelerate does not
    load them again (strictly, which the missing frozen weights would fail)."""
    for i, model in enumerate(models):
        load_trainable_state(extract_model_from_parallel(model), load_file(Path(folder) / weights_file(i)))
    models.clear()


def register(accelerator, *objects) -> None:
    """Make ``save``/``load`` cover ``objects`` (anything with ``state_dict``/``load_state_dict`` that
    ``accelerator.prepare`` did not see: schedulers, ``Trainable`` models, their optimizers) besides the prepared
    models and optimizers, and save replicated models' trainable parameters only. Once per accelerator."""
    accelerator.register_save_state_pre_hook(keep_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)
    accelerator.register_for_checkpointing(*objects)


def step_dir(root: str | Path, step: int, tmp: bool = False) -> Path:
    return Path(root) / "checkpoints" / f"{'.tmp-' if tmp else ''}step-{step:06d}"


def checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root/checkpoints``, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.match(p.name) and (p / TRAINER_STATE).is_file())


def latest(root: str | Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def save(root: str | Path, step: int, trainer_state: dict, accelerator, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically: ``accelerator.save_state`` on every rank, ``trainer_state`` from the
    main one, then the rename and the pruning to the last ``keep``."""
    tmp, final = step_dir(root, step, tmp=True), step_dir(root, step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_dir(tmp, final)
        for old in checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(path: Path, accelerator) -> dict:
    """Restore a checkpoint written by ``save`` into the prepared and registered objects; returns the trainer
    state. Resuming needs the number of processes that wrote it (each rank's generators are in its own file)."""
    rng = Path(path) / f"random_states_{accelerator.process_index}.pkl"
    if not rng.is_file():  # accelerate would only log it, and the run would not continue exactly
        raise ConfigError(f"{rng} is missing: checkpoint {path} was written by fewer processes than the "
                          f"{accelerator.num_processes} resuming it; resume with as many as wrote it")
    accelerator.load_state(str(path))
    return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
