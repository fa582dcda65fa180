"""Offline data selection by repeated inference (Temporal-R1).

``mmrl select TASK [--config FILE] --k 8 --output stats.jsonl [key=value ...]`` samples ``k`` completions of
every training item with the configured model and writes one JSON line per item:
``{"index", "id", "mean", "std", "rewards"}``. Items whose rewards never vary give GRPO no gradient (every
advantage is 0); Temporal-R1 keeps the items whose reward variance across repeated inference is informative.
The ``curriculum`` prompt sampler (``mmrl.algorithms.sampling``) reads such a file: it keeps the items with
``std > min_std`` and draws them from easy (high mean reward) to hard, epoch after epoch.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmrl.algorithms.sampling import informative, item_statistics


def select(cfg, k: int, output: str | Path, progress: bool = True) -> list[dict]:
    """Score every training item of ``cfg``'s task with ``k`` sampled completions of ``cfg.model`` and write the
    statistics to ``output`` (JSON lines); returns them."""
    from mmrl.config import build
    from mmrl.data import ImageCache
    from mmrl.models.load import load_policy, placeholder_ids, resolve_path
    from mmrl.registry import get_task
    from mmrl.rollout.groups import sample_groups, select_rewards, slices
    from mmrl.rollout.shared import unsupported_reason
    from mmrl.store import atomic_write_text
    from mmrl.types import LoadContext

    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task)
    data_cfg = build(task.config_class, cfg.data, prefix="data.")
    train_set = task.load("train", data_cfg, LoadContext(cfg.model.min_pixels, cfg.model.max_pixels, cfg.model.cache_dir))
    model, processor, _ = load_policy(replace(cfg.model, path=resolve_path(cfg.model)))
    model.eval()
    rewards = select_rewards(task.reward_functions(data_cfg), cfg.rewards or task.default_rewards(data_cfg))
    images, g = ImageCache(cfg.model.min_pixels, cfg.model.max_pixels), cfg.grpo
    per_batch = max(1, g.micro_batch_size // k)
    rows = []
    for sl in tqdm(slices(len(train_set), per_batch), desc="select", disable=not progress):
        ro = sample_groups(model, processor, train_set[sl], k, list(range(sl.start, sl.stop)), images, rewards,
                           micro_batch_size=g.micro_batch_size, suppress=placeholder_ids(processor.tokenizer),
                           device=next(model.parameters()).device, max_new_tokens=g.max_new_tokens,
                           temperature=g.temperature, top_p=g.top_p, shared=unsupported_reason(model) is None)
        for i in range(sl.start, sl.stop):
            stats = item_statistics(ro.total[ro.group_ids == i].tolist())
            rows.append({"index": i, "id": train_set[i].id, **stats})
    atomic_write_text(Path(output), "".join(json.dumps(r) + "\n" for r in rows))
    kept = len(informative(rows, 0.0))
    print(f"wrote {len(rows)} items to {output}; {kept} have varying rewards "
          f"(mean reward {sum(r['mean'] for r in rows) / max(len(rows), 1):.3f})")
    return rows
