"""The task adapter interface: a task turns records into ``Sample``s and owns parsing, rewards and metrics."""
from __future__ import annotations

from typing import Any, Callable, Protocol

from mmrl.types import LoadContext, Sample

RewardFn = Callable[..., list[float]]
"""``fn(completions: list[str], **fields) -> list[float]``; never raises on model output."""


class Task(Protocol):
    """What the trainer and the evaluator need from a task.

    * ``config_class`` is the dataclass of the task's ``data:`` config section.
    * ``load(split, cfg, ctx)`` returns the samples of ``split`` ("train" or "eval") for the data config ``cfg``.
    * ``default_rewards(cfg)`` gives reward weights used when the run config names none.
    * ``reward_functions(cfg)`` maps reward names to callables; the trainer weights them by config.
    * ``score(completion, sample)`` grades one completion for evaluation with the same parser the rewards use
      and returns numbers such as ``{"correct": 1.0}``.
    """

    name: str

    config_class: type

    def load(self, split: str, cfg: Any, ctx: LoadContext) -> list[Sample]: ...

    def default_rewards(self, cfg: Any) -> dict[str, float]: ...

    def reward_functions(self, cfg: Any) -> dict[str, RewardFn]: ...

    def score(self, completion: str, sample: Sample) -> dict[str, float]: ...
