"""Experiment trackers through accelerate's tracker API: the config's ``log_with`` names them (``tensorboard``, the
default, writes under ``<output_dir>/tb``; ``wandb``, ``mlflow``, ... need their package: ``pip install
'mmrl[wandb]'``). ``metrics.jsonl`` is written whatever the trackers (``mmrl.store.RunDir``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration

from mmrl.config import to_dict
from mmrl.errors import ConfigError
from mmrl.host_memory import keep_freed_host_memory

TRACKER_PACKAGES = {"comet_ml": "comet-ml"}
"""accelerate's tracker names -> the pip package each needs, where the two differ (pyproject.toml has an extra named
after each tracker but tensorboard, which mmrl depends on)."""


def check_trackers(log_with: Sequence[str]) -> None:
    """``ConfigError`` naming ``log_with`` for a tracker accelerate does not know or whose package is missing (run
    before any model is loaded: accelerate itself would only warn and log without it)."""
    known = LoggerType.list()  # "all": every installed tracker
    available = {str(t) for t in get_available_trackers()}
    for name in log_with:
        if name not in known:
            raise ConfigError(f"log_with: unknown tracker {name!r}; valid: {', '.join(known)} (or [] for "
                              "metrics.jsonl only)")
        if name != "all" and name not in available:
            package = TRACKER_PACKAGES.get(name, name)
            raise ConfigError(f"log_with: tracker {name!r} is not installed: pip install {package}")


def make_accelerator(cfg, trackers: Sequence[GeneralTracker] = ()) -> Accelerator:
    """The run's ``Accelerator`` (on the CPU without CUDA, where freed host memory is then kept for reuse:
    ``host_memory``) logging to the trackers named by ``cfg.log_with`` and to ``trackers`` (tracker objects passed
    from Python); trackers that write files (TensorBoard) write them under ``<output_dir>/tb``."""
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "tb"))
    cpu = not torch.cuda.is_available()
    if cpu:
        keep_freed_host_memory()
    return Accelerator(cpu=cpu, log_with=[*cfg.log_with, *trackers] or None, project_config=project)


def start_trackers(accelerator: Accelerator, cfg) -> None:
    """Start the trackers' run, named after the run directory (TensorBoard: ``tb/<name>/``), with ``cfg`` flattened
    as its hyperparameters."""
    name = Path(cfg.output_dir).resolve().name or "mmrl"
    accelerator.init_trackers(name, config=flat_config(to_dict(cfg)))


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as one level of dotted keys (``grpo.lr``), every value a scalar trackers take: numbers,
    strings, booleans and ``None`` as they are, anything else (lists, empty dicts) as its JSON text."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[prefix + key] = value
        else:
            flat[prefix + key] = json.dumps(value, default=str)
    return flat
