"""Offline data selection by repeated inference (Temporal-R1).

``mmrl select TASK [--config FILE] --k 8 --output stats.jsonl [key=value ...]`` samples ``k`` completions of
every training item with the configured model and writes one JSON line per item:
``{"index", "id", "mean", "std", "rewards"}``. Items whose rewards never vary give GRPO no gradient (every
advantage is 0); Temporal-R1 keeps the items whose reward variance across repeated inference is informative.
``--keep FILE [--min-std S]`` also writes the items with reward std above S as a dataset in the task's format
(Temporal-R1's variance-aware selection as a filtered training set; nothing when no item is above S: an empty data
set cannot train). The ``curriculum`` prompt sampler (``mmrl.algorithms.sampling``) reads such a file: it keeps the items with
``std > min_std`` and draws them from easy (high mean reward) to hard, epoch after epoch.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmrl.algorithms.sampling import informative, item_statistics
from mmrl.errors import MMRLError


def select(cfg, k: int, output: str | Path, progress: bool = True, keep: str | Path | None = None,
           min_std: float = 0.0) -> list[dict]:
    """Score every training item of ``cfg``'s task with ``k`` sampled completions of ``cfg.model`` and write the
    statistics to ``output`` (JSON lines); returns them. With ``keep``, also write the items whose reward std
    exceeds ``min_std`` as a dataset in the task's own format (``task.export``), usable as ``data.train``."""
    from mmrl.plugins import TASKS
    from mmrl.task import opened

    if keep is not None and not TASKS.capability(cfg.task, "exports"):
        raise MMRLError(f"task {cfg.task!r} cannot write a filtered dataset (no export); drop --keep")
    with opened(cfg.task, cfg.data) as (task, data_cfg):
        return _select(cfg, task, data_cfg, k, Path(output), progress, keep, min_std)


def _select(cfg, task, data_cfg, k: int, output: Path, progress: bool, keep, min_std: float) -> list[dict]:
    from mmrl.data import load_context, media_cache
    from mmrl.models.load import load_policy, model_family, placeholder_ids, resolve_path
    from mmrl.rollout.groups import sample_groups, slices
    from mmrl.rollout.scoring import select_rewards
    from mmrl.rollout.shared import unsupported_reason
    from mmrl.store import atomic_write_text

    torch.manual_seed(cfg.seed)
    family = model_family(cfg.model)
    train_set = task.load("train", data_cfg, load_context(cfg.model, family))
    model, processor, _ = load_policy(replace(cfg.model, path=resolve_path(cfg.model)))
    model.eval()
    rewards = select_rewards(task.reward_functions(data_cfg), cfg.rewards or task.default_rewards(data_cfg),
                             cfg.reward_args)
    media, g = media_cache(cfg.model, family), cfg.grpo
    per_batch = max(1, g.micro_batch_size // k)
    rows = []
    for sl in tqdm(slices(len(train_set), per_batch), desc="select", disable=not progress):
        ro = sample_groups(model, processor, train_set[sl], k, list(range(sl.start, sl.stop)), media, rewards,
                           micro_batch_size=g.micro_batch_size, suppress=placeholder_ids(processor.tokenizer),
                           device=next(model.parameters()).device, max_new_tokens=g.max_new_tokens,
                           temperature=g.temperature, top_p=g.top_p, shared=unsupported_reason(model) is None,
                           reward_timeout=cfg.reward_timeout)
        for i in range(sl.start, sl.stop):
            stats = item_statistics(ro.total[ro.group_ids == i].tolist())
            rows.append({"index": i, "id": train_set[i].id, **stats})
    atomic_write_text(output, "".join(json.dumps(r) + "\n" for r in rows))
    kept = informative(rows, min_std)
    print(f"wrote {len(rows)} items to {output}; {len(kept)} have reward std > {min_std} "
          f"(mean reward {sum(r['mean'] for r in rows) / max(len(rows), 1):.3f})")
    if keep is not None and kept:
        task.export([train_set[i] for i in kept], Path(keep))
        print(f"wrote the {len(kept)} informative items to {keep}")
    elif keep is not None:
        print(f"no item has reward std > {min_std}: {keep} not written (an empty data set cannot train)")
    return rows
