"""Numerical faults: an update whose loss or gradient is NaN or infinite is skipped, never applied.

Both trainers (``mmrl.trainer``, ``mmrl.diffusion.trainer``) ask a ``SkipGuard`` before every optimizer step
(``allow``) and tell it once per training step whether any of the step's updates was skipped (``end_step``). A
skipped update leaves the weights and the optimizer's moments as they were (the trainer zeroes the gradients
without stepping the optimizer); the step counts in the cumulative ``skipped_steps`` metric, the main process prints
one line, and ``limit`` skipped steps in a row stop the run with ``NonFiniteError`` (``stop_if_stuck``). The
trainers write no checkpoint after a skipped step, so the last checkpoint on disk predates an unbroken run of
faults.

The decision is all-reduced: every rank applies or skips the same update. Under DDP the averaged gradients carry a
NaN to every rank anyway, but a loss can be non-finite on one rank with finite gradients (a NaN in a term that does
not depend on the weights), and sharded gradients are seen in part by each rank.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmrl.errors import NonFiniteError


def all_finite(values: Sequence[float | torch.Tensor], accelerator) -> bool:
    """Whether every one of ``values`` (losses, a gradient norm) is finite on every rank: one flag, summed over the
    ranks, so all of them get the same answer (``accelerator`` None or one process: this process's values)."""
    bad = float(not all(math.isfinite(float(v)) for v in values))
    if accelerator is None or accelerator.num_processes == 1:
        return bad == 0
    return accelerator.reduce(torch.tensor(bad, device=accelerator.device), "sum").item() == 0


class SkipGuard:
    """Skips updates with a non-finite loss or gradient, counts the steps that had one and stops a run that keeps
    producing them. ``section`` is the config section of the trainer's keys (``grpo``, ``optim``), for messages."""

    def __init__(self, limit: int = 0, section: str = "optim", main: bool = True):
        self.limit, self.section, self.main = limit, section, main
        self.skipped = 0  # steps with a skipped update since the run began (restored on resume)
        self.consecutive = 0  # such steps since the last step whose updates were all applied
        self._updates_skipped = 0  # in the current step

    def allow(self, values: Sequence[float | torch.Tensor], accelerator) -> bool:
        """Whether to apply the update whose micro-batch losses and gradient norm are ``values``: only when every
        one is finite on every rank (``all_finite``). The caller zeroes the gradients either way."""
        ok = all_finite(values, accelerator)
        self._updates_skipped += not ok
        return ok

    def end_step(self, step: int) -> bool:
        """Close training step ``step`` (1-based): whether any of its updates was skipped. Such a step is counted
        and reported in one line by the main process; a step without one resets the run of faults."""
        skipped, self._updates_skipped = self._updates_skipped, 0
        if not skipped:
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        if self.main:
            print(f"mmrl: step {step}: non-finite loss or gradient, {skipped} update(s) skipped (weights unchanged); "
                  f"{self.consecutive} such step(s) in a row, {self.skipped} in all", flush=True)
        return True

    def stop_if_stuck(self, step: int) -> None:
        """``NonFiniteError`` once ``limit`` steps in a row (ending with step ``step``) had a skipped update; never
        with ``limit`` 0."""
        if not self.limit or self.consecutive < self.limit:
            return
        first = step - self.consecutive + 1
        key = f"{self.section}.max_consecutive_skips"
        raise NonFiniteError(
            f"steps {first}-{step}: {self.consecutive} steps in a row had a NaN or infinite loss or gradient "
            f"({key}={self.limit}), so the run stops. None of their updates reached the weights and no checkpoint "
            f"was written after step {first - 1}: resume=true continues from the last one. Look at these steps in "
            f"metrics.jsonl and rollouts/ (a reward or advantage that is NaN or inf, a loss or grad_norm that "
            f"explodes before them), then lower {self.section}.lr or clip gradients ({self.section}.max_grad_norm); "
            f"{key}=0 never stops")
