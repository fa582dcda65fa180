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
- ``trainer_state.pt`` from the main process (step, advantage state, prompt sampler: whatever the trainer passes);
- ``manifest.json``, written last: the step and, per other file (recursively), its relative path, size and SHA-256.

Why only the trainable parameters: accelerate saves a replicated model's whole ``state_dict``, under LoRA the frozen
base too (6.7 MB instead of 0.6 MB a checkpoint for the tiny Qwen2.5-VL with r=4 adapters); resume rebuilds the
base from the run's starting model anyway. So a save hook keeps, of each replicated model, the parameters with
``requires_grad`` (named as in the unwrapped model, so the file does not depend on the number of processes), and a
load hook loads them, checking that they match the model.
Sharded models never reach these hooks (accelerate hands them only the replicated ones): their engines write the
whole model, frozen weights included, in their own format: correct, not adapter-sized.

The folder is written into a hidden ``.tmp-step-NNNNNN`` and renamed into place when every rank has finished, so a
run killed mid-write leaves the previous checkpoint intact and never a half one; the last ``keep`` are kept (an older
one is renamed to a hidden ``.tmp-`` name before it is deleted, and each save first deletes what killed saves and
deletions left there). A
published folder can still be damaged later (a disk or copy that truncates or flips bytes, a power loss before the
data reached the disk: nothing is fsync'd), so resuming (``resume_point``) takes the newest checkpoint whose files
match its manifest (``verify``), says in one line why each newer one was skipped, and refuses to start when none
matches. A folder without a manifest (written before manifests existed, or damaged) is not a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import SAFE_MODEL_NAME, broadcast_object_list, extract_model_from_parallel
from safetensors.torch import load_file

from mmrl.errors import ConfigError, DataError
from mmrl.store import publish_dir, write_json_atomic

PATTERN = re.compile(r"^step-(\d{6})$")
TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"


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


def step_of(path: Path) -> int:
    """The step of checkpoint folder ``path`` (``step-000004`` -> 4)."""
    return int(PATTERN.match(path.name)[1])


def step_dirs(root: str | Path) -> list[Path]:
    """Every ``step-NNNNNN`` folder under ``root/checkpoints``, complete or not, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.match(p.name) and p.is_dir())


def checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root/checkpoints`` (published with their manifest), oldest first."""
    return [p for p in step_dirs(root) if (p / MANIFEST).is_file()]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (checkpoint files can be gigabytes; ``hashlib.file_digest`` would
    need Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def listing(folder: Path) -> list[str]:
    """Every file under ``folder`` but its manifest, recursively (FSDP and DeepSpeed write sub-folders), as sorted
    POSIX paths relative to ``folder``."""
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(name for name in names if name != MANIFEST)


def manifest(folder: Path, step: int) -> dict:
    """The manifest of the finished checkpoint folder ``folder``: its step and each file's size and SHA-256."""
    return {"step": step, "files": {name: {"size": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
                                    for name in listing(folder)}}


def read_manifest(folder: Path) -> tuple[int, dict[str, tuple[int, str]]]:
    """``folder``'s manifest as ``(step, {path: (size, sha256)})``; ``FileNotFoundError`` when there is none,
    ``ValueError``/``KeyError``/``TypeError``/``AttributeError`` when it is not one."""
    data = json.loads((folder / MANIFEST).read_text())
    return int(data["step"]), {name: (int(e["size"]), str(e["sha256"])) for name, e in data["files"].items()}


def mismatch(folder: Path, files: dict[str, tuple[int, str]]) -> str | None:
    """The first way ``folder`` differs from the manifest's ``files`` (``path: problem``), or None. Cheap checks
    first (which files exist, then their sizes), checksums last, so a missing or truncated file is found without
    reading gigabytes. A file the manifest does not list counts too: accelerate loads files by name (each rank's
    ``random_states_K.pkl``, every shard in an FSDP folder), so an unlisted one would be read unchecked."""
    found = listing(folder)
    missing = sorted(set(files) - set(found))
    if missing:
        return f"{missing[0]}: missing"
    extra = sorted(set(found) - set(files))
    if extra:
        return f"{extra[0]}: not in the manifest"
    for name, (size, _) in files.items():
        actual = (folder / name).stat().st_size
        if actual < size:
            return f"{name}: truncated: {actual} of {size} bytes"
        if actual > size:
            return f"{name}: {actual} bytes, {size} expected"
    for name, (_, digest) in files.items():
        if file_sha256(folder / name) != digest:
            return f"{name}: checksum mismatch"
    return None


def verify(path: str | Path) -> str | None:
    """None when checkpoint folder ``path`` holds exactly the files its manifest lists, with their sizes and
    checksums; else one line saying why not, naming the folder and the file (``step-000004: model.safetensors:
    checksum mismatch``)."""
    path = Path(path)
    try:
        step, files = read_manifest(path)
    except FileNotFoundError:
        return f"{path.name}: {MANIFEST}: missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{path.name}: {MANIFEST}: unreadable ({type(e).__name__}: {e})"
    if f"step-{step:06d}" != path.name:
        return f"{path.name}: {MANIFEST}: written for step-{step:06d}"
    try:
        problem = mismatch(path, files)
    except OSError as e:  # a file unreadable, or gone while checking
        return f"{path.name}: unreadable ({e})"
    return None if problem is None else f"{path.name}: {problem}"


def newest_good(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest step folder under ``root/checkpoints`` that verifies (None if none does) and, newest first, why
    each newer one did not. It stops at the first good one: older ones need no hashing."""
    reasons = []
    for path in reversed(step_dirs(root)):
        reason = verify(path)
        if reason is None:
            return path, reasons
        reasons.append(reason)
    return None, reasons


def resume_point(root: str | Path, accelerator) -> Path | None:
    """The checkpoint a resumed run loads: ``newest_good``, with one printed line per newer folder skipped. None
    when there is no step folder at all (nothing to resume: the run starts afresh); ``DataError`` when there are
    some and none verifies. Called on every rank: the main process verifies (the files are read once) and
    broadcasts its choice, so all ranks load the same checkpoint even if their reads of the files would differ."""
    decision = [None, []]
    if accelerator.is_main_process:
        path, reasons = newest_good(root)
        for reason in reasons if path is not None else []:
            print(f"mmrl: skipping checkpoint {reason}", flush=True)
        decision = [None if path is None else str(path), reasons]
    path, reasons = broadcast_object_list(decision)
    if path is None and reasons:
        raise DataError(f"resume=true, but no checkpoint under {Path(root) / 'checkpoints'} is intact ("
                        f"{'; '.join(reasons)}): restore one, or start the run again (overwrite=true, no resume)")
    return None if path is None else Path(path)


def stale(found: list[Path], newest: Path, keep: int) -> list[Path]:
    """Which of the checkpoints ``found`` (oldest first) pruning deletes once ``newest`` is written: those up to
    ``newest`` but the last ``keep`` (none when ``keep`` is 0). Later ones are left alone: they are damaged ones
    that a resume skipped, which the run replaces as it reaches their steps; counting them would delete good
    checkpoints, down to the one just written."""
    upto = [p for p in found if p.name <= newest.name]
    return upto[:-keep] if keep > 0 else []


def save(root: str | Path, step: int, trainer_state: dict, accelerator, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically: ``accelerator.save_state`` on every rank, ``trainer_state`` from the
    main one, once all have finished the manifest of every file, then the rename and the pruning to the last
    ``keep`` (``stale``), each pruned folder renamed to a hidden ``.tmp-`` name before it is deleted. Hidden
    folders that killed saves or prunings left are deleted first."""
    tmp, final = step_dir(root, step, tmp=True), step_dir(root, step)
    if accelerator.is_main_process:  # what killed saves and prunings left (at most one save runs at a time)
        for leftover in (Path(root) / "checkpoints").glob(".tmp-step-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / MANIFEST, manifest(tmp, step))
        publish_dir(tmp, final)
        for old in stale(checkpoints(root), final, keep):  # hidden first: a kill mid-delete leaves no half folder
            doomed = old.with_name(f".tmp-{old.name}")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(path: Path, accelerator) -> dict:
    """Restore a checkpoint written by ``save`` into the prepared and registered objects; returns the trainer
    state. Resuming needs the number of processes that wrote it (each rank's generators are in its own file):
    more or fewer is refused."""
    rng = Path(path) / f"random_states_{accelerator.process_index}.pkl"
    if not rng.is_file():  # accelerate would only log it, and the run would not continue exactly
        raise ConfigError(f"{rng} is missing: checkpoint {path} was written by fewer processes than the "
                          f"{accelerator.num_processes} resuming it; resume with as many as wrote it")
    if (Path(path) / f"random_states_{accelerator.num_processes}.pkl").is_file():  # that rank's state would be lost
        raise ConfigError(f"checkpoint {path} was written by more processes than the {accelerator.num_processes} "
                          "resuming it; resume with as many as wrote it")
    accelerator.load_state(str(path))
    return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
