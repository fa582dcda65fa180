"""The task interface: everything the engine calls on a task, with defaults for the optional parts.

A task turns records into ``Sample``s and owns their parsing, rewards and grading (the same parser feeds the
reward and the metric). It is a class registered by name::

    from mmrl.plugins import TASKS
    from mmrl.task import Task

    @TASKS.register("my_task", config=MyData)
    class MyTask(Task):
        def load(self, split, cfg, ctx): ...
        def reward_functions(self, cfg): ...
        def default_rewards(self, cfg): ...
        def score(self, completion, sample): ...

Registration capabilities (``mmrl.plugins.TASKS``): ``config`` (the dataclass of the run's ``data:`` section),
``renderer`` (the demo renderer for its rollouts), ``benchmarks`` (benchmark record formats that
``samples_from_records`` accepts, for ``mmrl eval BENCHMARK --model``) and ``exports`` (``export`` writes a
filtered dataset, for ``mmrl select --keep``).

Lifecycle: the engine makes one instance per run, calls ``open(cfg)`` once before anything else (start a judge
model, a worker pool: rewards and ``score`` share what it holds) and ``close()`` at the end, also on error.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from mmrl.errors import ConfigError, DataError, MMRLError
from mmrl.plugins import TASKS
from mmrl.types import LoadContext, Sample

RewardFn = Callable[..., list[float]]
"""``fn(completions: list[str], **fields) -> list[float]`` (TRL's signature): each keyword is a column of the
samples' ``fields``, a list with one value per completion. It should never raise on model output; when it does
anyway, the trainer scores those completions 0 and counts the failure."""


class Task:
    """What the trainer, the evaluators and ``mmrl select`` need from a task. Subclass it and override the four
    abstract methods; the others have working defaults."""

    # -- required ----------------------------------------------------------------------------------------------
    def load(self, split: str, cfg: Any, ctx: LoadContext) -> list[Sample]:
        """The samples of ``split`` ("train" or "eval") for the data config ``cfg``."""
        raise NotImplementedError

    def reward_functions(self, cfg: Any) -> dict[str, RewardFn]:
        """Reward name -> callable. The run's ``rewards:`` weights choose among these (and ``REWARDS``)."""
        raise NotImplementedError

    def default_rewards(self, cfg: Any) -> dict[str, float]:
        """Reward weights used when the run's config names none."""
        raise NotImplementedError

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        """Grade one completion for evaluation with the parser the rewards use, e.g. ``{"accuracy": 1.0}``."""
        raise NotImplementedError

    # -- optional ----------------------------------------------------------------------------------------------
    def score_batch(self, completions: list[str], samples: list[Sample]) -> list[dict[str, float]]:
        """``score`` of each completion (default: one at a time). Override to grade a batch at once, e.g. over a
        worker pool."""
        return [self.score(text, sample) for text, sample in zip(completions, samples)]

    def open(self, cfg: Any) -> None:
        """Start the resources the task's rewards and grading share (default: none)."""

    def close(self) -> None:
        """Release what ``open`` started (default: nothing). Called once, also after an error."""

    def aggregate(self, scores: list[dict[str, float]], samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """Dataset-level metrics from the per-sample ``score`` results, the samples and the raw ``outputs`` they
        grade (default: the mean of each number, and ``n``). Override for metrics that are not means, such as COCO
        mAP, which ranks every detection of the dataset by confidence."""
        totals: dict[str, float] = {}
        for row in scores:
            for key, value in row.items():
                totals[key] = totals.get(key, 0.0) + value
        return {**{k: v / max(len(scores), 1) for k, v in totals.items()}, "n": len(scores)}

    def samples_from_records(self, records: list, cfg: Any, ctx: LoadContext) -> list[Sample]:
        """Samples of already-loaded benchmark records (the formats named by the ``benchmarks`` capability)."""
        raise MMRLError(f"{type(self).__name__} builds no samples from benchmark records")

    def export(self, samples: list[Sample], path: Path) -> None:
        """Write ``samples`` as a dataset in the task's own format (with the ``exports`` capability)."""
        raise MMRLError(f"{type(self).__name__} cannot write a dataset")


@contextmanager
def opened(name: str, data: dict[str, Any]) -> Iterator[tuple[Task, Any]]:
    """``(task, data_cfg)`` of the task registered as ``name`` with its ``data:`` section checked, between the
    task's ``open`` and ``close``."""
    data_cfg = TASKS.config(name, data, "data")
    task = TASKS.get(name)()
    task.open(data_cfg)
    try:
        yield task, data_cfg
    finally:
        task.close()


def hf_source(split: str, cfg: Any):
    """The ``mmrl.hf_data.HFSource`` of ``split`` when ``cfg.train`` / ``cfg.eval`` is a ``datasets`` mapping, else
    ``None`` (a file path, or unset for synthetic data)."""
    value = cfg.train if split == "train" else cfg.eval
    if not isinstance(value, dict):
        return None
    from mmrl import hf_data  # not at the top: it imports mmrl.eval.caption_qa, which imports this module

    return hf_data.source_of(value, f"data.{split}")


def hf_records(split: str, cfg: Any, ctx: LoadContext, task: str) -> Any:
    """``task``'s records of the ``datasets`` source of ``split`` (``mmrl.hf_data.read_records``), or ``None`` when
    ``split`` names no such source."""
    source = hf_source(split, cfg)
    if source is None:
        return None
    from mmrl import hf_data

    return hf_data.read_records(task, source, ctx.cache_dir)


def read_split(split: str, cfg: Any, ctx: LoadContext, synthetic: Callable[[Any, str, str], Path],
               read: Callable[[Path], list], task: str | None = None) -> list:
    """The records of ``split`` ("train" or "eval"): those of the ``datasets`` source when ``cfg.train`` or
    ``cfg.eval`` is a mapping (``mmrl.hf_data``, read for ``task``), else ``read`` of the file it names, else of the
    synthetic file ``synthetic(cfg.synthetic, split, ctx.cache_dir)`` (generated once, cached); a ``DataError``
    naming the file when it holds no records."""
    records = hf_records(split, cfg, ctx, task) if task else None
    if records is not None:
        return records
    path = cfg.train if split == "train" else cfg.eval
    source = Path(path) if path else synthetic(cfg.synthetic, split, ctx.cache_dir)
    records = read(source)
    if not records:
        raise DataError(f"{source}: no records")
    return records


def task_for_benchmark(benchmark: str) -> str:
    """The name of the task that builds prompts for ``benchmark`` records (first by name if several do)."""
    for name in TASKS.names():
        if benchmark in TASKS.capability(name, "benchmarks"):
            return name
    raise ConfigError(f"no registered task declares the benchmark {benchmark!r}")


def score_outputs(task: Task, samples: list[Sample], outputs: list[str]) -> dict[str, float]:
    """The task's dataset-level metrics of ``outputs`` (one completion per sample): ``aggregate`` of ``score``."""
    return task.aggregate(task.score_batch(outputs, samples), samples, outputs)
