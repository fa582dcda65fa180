"""Scoring a step's completions: one call per reward function on the whole batch, a failure scores 0.

Each reward function receives every completion of the batch at once (so it can batch a judge model or fan out to
a worker pool), and the reward functions of a step run concurrently in threads (a CPU-bound reward that releases
the GIL, a subprocess pool or a judge on another device overlap). Model output is untrusted and reward code can
be wrong: a call that raises, returns the wrong number of values, or runs past ``timeout`` seconds scores 0 for
all its completions; a non-finite or non-numeric value scores 0 for that completion. Each such completion is
counted (``Scores.failures``, logged as ``reward/<name>/failures``) and the first failure of each reward is
reported in one warning; training never stops for it.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mmrl.errors import ConfigError
from mmrl.plugins import REWARDS
from mmrl.types import Sample

_warned: set[str] = set()


@dataclass
class Scores:
    components: dict[str, torch.Tensor]
    """Reward name -> [N] float64 values (0 where the reward failed)."""
    total: torch.Tensor
    """[N] weighted sum of the components."""
    failures: dict[str, torch.Tensor]
    """Reward name -> [N] float64, 1 where the completion's value is a failure's 0."""


def select_rewards(task_rewards: dict[str, Callable], weights: dict[str, float],
                   args: dict[str, dict[str, Any]] | None = None) -> dict[str, tuple[Callable, float]]:
    """``{name: (fn, weight)}`` for the configured weights. A name is the task's own reward or one registered in
    ``mmrl.plugins.REWARDS`` (its keyword hyperparameters bound from ``reward_args.<name>``)."""
    args = args or {}
    stray = sorted(set(args) - set(weights))
    if stray:
        raise ConfigError(f"config key 'reward_args.{stray[0]}' names a reward that 'rewards' does not use")
    selected = {}
    for name, weight in weights.items():
        if name in task_rewards:
            if name in args:
                raise ConfigError(f"config key 'reward_args.{name}': the task's own reward {name!r} is configured "
                                  "in the task's 'data:' section")
            selected[name] = (task_rewards[name], weight)
        elif name in REWARDS:
            selected[name] = (REWARDS.bind(name, args.get(name), f"reward_args.{name}"), weight)
        else:
            valid = ", ".join([*task_rewards, *(n for n in REWARDS.names() if n not in task_rewards)])
            raise ConfigError(f"unknown reward '{name}' in config key 'rewards'; valid: {valid}")
    return selected


def start_reward(name: str, fn: Callable, completions: list[str],
                 fields: dict[str, list]) -> tuple[threading.Thread, dict[str, Any]]:
    """``fn(completions, **fields)`` started in a daemon thread (one a hung reward cannot keep alive at exit); the
    dict receives ``values`` or ``error``."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["values"] = fn(completions, **fields)
        except Exception as e:  # noqa: BLE001  (a reward's bug must not end the run)
            result["error"] = f"{type(e).__name__}: {e}"

    worker = threading.Thread(target=run, name=f"reward-{name}", daemon=True)
    worker.start()
    return worker, result


def finish_reward(name: str, worker: threading.Thread, result: dict[str, Any], n: int, timeout: float | None,
                  started: float) -> tuple[list[float], list[bool]]:
    """The reward started at ``started`` (``time.monotonic()``) as ``(values, failed)`` for its ``n`` completions,
    waiting at most until ``timeout`` seconds after its start (None: no limit); never raises."""
    worker.join(None if timeout is None else max(0.0, started + timeout - time.monotonic()))
    if worker.is_alive():
        return _failed(name, n, f"no answer within {timeout:g} s")
    if "error" in result:
        return _failed(name, n, result["error"])
    values = result["values"]
    try:
        values = list(values)
    except TypeError:
        return _failed(name, n, f"returned {type(values).__name__}, not a list")
    if len(values) != n:
        return _failed(name, n, f"returned {len(values)} values for {n} completions")
    out, failed = [], []
    for v in values:
        x = _finite(v)
        out.append(0.0 if x is None else x)
        failed.append(x is None)
    if any(failed):
        _warn(name, f"{sum(failed)} non-finite or non-numeric values")
    return out, failed


def call_reward(name: str, fn: Callable, completions: list[str], fields: dict[str, list],
                timeout: float | None) -> tuple[list[float], list[bool]]:
    """``fn(completions, **fields)`` as ``(values, failed)`` per completion, within ``timeout``; never raises."""
    started = time.monotonic()
    return finish_reward(name, *start_reward(name, fn, completions, fields), len(completions), timeout, started)


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _failed(name: str, n: int, reason: str) -> tuple[list[float], list[bool]]:
    _warn(name, reason)
    return [0.0] * n, [True] * n


def _warn(name: str, reason: str) -> None:
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"reward {name!r} failed ({reason}); its completions score 0 and are counted in "
                      f"reward/{name}/failures (further failures of this reward are only counted)", stacklevel=3)


def score(rewards: dict[str, tuple[Callable, float]], completions: list[str], samples: list[Sample],
          timeout: float | None = None, step_info: dict[str, Any] | None = None) -> Scores:
    """Every reward component per completion, their weighted sum and the failure flags; the reward functions
    run concurrently, each called once on the whole batch. ``step_info`` (the trainer's ``step`` and
    ``total_steps``) becomes fields of the same value for every completion, for rewards whose rule changes during
    training (Vision-R1's progressive thresholds)."""
    keys = {k for s in samples for k in s.fields}
    fields = {k: [s.fields.get(k) for s in samples] for k in keys}
    fields.update({k: [v] * len(samples) for k, v in (step_info or {}).items()})
    started = time.monotonic()
    running = {name: start_reward(name, fn, completions, fields) for name, (fn, _) in rewards.items()}
    results = {name: finish_reward(name, *running[name], len(completions), timeout, started) for name in rewards}
    components = {name: torch.tensor(results[name][0], dtype=torch.float64) for name in rewards}
    failures = {name: torch.tensor(results[name][1], dtype=torch.float64) for name in rewards}
    total = sum((w * components[name] for name, (_, w) in rewards.items()),
                torch.zeros(len(completions), dtype=torch.float64))
    return Scores(components, total, failures)
