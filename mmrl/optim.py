"""Optimizer and learning-rate schedule shared by the SFT and RL phases."""
from __future__ import annotations

import math

import torch

from mmrl.errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimizer step ``step``: linear warm-up, then constant/linear/cosine decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown lr_schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, warmup: int, total: int, schedule: str):
    """AdamW over the trainable parameters and a ``LambdaLR`` following ``lr_factor``."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown lr_schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (is everything frozen?)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, schedule))
    return optimizer, scheduler
