"""The diffusion RL loop, readable top to bottom.

``train(cfg)``: load the prompts and the rewards; build the algorithm named by ``cfg.algorithm`` with its
``algorithm_args`` (``mmrl.diffusion.algorithms``); load the pipeline (and a frozen reference denoiser when the
algorithm needs one under full fine-tuning, ``mmrl.reference``); then for each step: draw prompts, let the algorithm sample, score and update
(``algorithm.step``), log metrics and rollouts, checkpoint; finally save the trained weights and write
``summary.json``. Every step reseeds its own generator from ``(seed, step)``, so a resumed run draws the same
prompts and noise as an uninterrupted one. One process on one device.
"""
from __future__ import annotations

import json
import time
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mmrl import checkpoint
from mmrl.config import to_dict
from mmrl.diffusion.algorithms import build_algorithm
from mmrl.diffusion.algorithms.base import Context, StepResult
from mmrl.diffusion.artifacts import save_final, to_png
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.image_rewards import WeightedImageReward
from mmrl.diffusion.pipeline import load_policy
from mmrl.diffusion.prompts import draw_prompts, load_prompts
from mmrl.optim import make_optimizer
from mmrl.reference import frozen_reference
from mmrl.store import RunDir, atomic_write_text, claim_run_dir


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``: a pure function of ``(seed, step)`` (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def image_path(step: int, index: int) -> str:
    return f"rollouts/step_{step:06d}/{index:04d}.png"


def write_rollouts(run: RunDir, step: int, result: StepResult, max_images: int) -> None:
    """``rollouts/step_NNNNNN.jsonl``: one object per prompt group (prompt, image paths relative to the run
    directory, every reward component, total, advantages), and the first ``max_images`` images as PNG."""
    batch = result.batch
    (run.root / "rollouts" / f"step_{step:06d}").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(batch.images[:max_images]):
        to_png(image, run.root / image_path(step, i))
    lines = []
    for start in range(0, len(batch.prompts), batch.group_size):
        rows = range(start, start + batch.group_size)
        lines.append(json.dumps({
            "step": step, "kind": "diffusion", "prompt": batch.prompts[start],
            "images": [image_path(step, i) if i < max_images else None for i in rows],
            "rewards": {name: [float(v[i]) for i in rows] for name, v in batch.rewards.items()},
            "total": [float(batch.total[i]) for i in rows],
            "advantages": None if result.advantages is None else [float(result.advantages[i]) for i in rows],
        }))
    atomic_write_text(run.root / "rollouts" / f"step_{step:06d}.jsonl", "\n".join(lines) + "\n")


def reward_summary(run: RunDir, window: int = 5) -> dict[str, float]:
    """Mean ``reward/mean`` of the first and last ``window`` steps of ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (run.root / "metrics.jsonl").read_text().splitlines() if line]
    rewards = [r["reward/mean"] for r in rows]
    first, last = rewards[:window], rewards[-window:]
    return {"first": sum(first) / len(first), "last": sum(last) / len(last), "window": window}


def train(cfg: DiffusionConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Run the loop described in the module docstring; returns the summary dict."""
    # 1. Everything that can be wrong in the config fails here, before any model is loaded.
    prompts = load_prompts(cfg.prompts.file, cfg.prompts.list)
    reward = WeightedImageReward([(r.name, r.weight, r.args) for r in cfg.rewards])
    algorithm = build_algorithm(cfg, reward.differentiable)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    claim_run_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    run = RunDir(cfg.output_dir)
    policy = load_policy(cfg.model, accelerator.device)
    policy.reference = frozen_reference(policy.denoiser, cfg, algorithm.needs_reference)
    optimizer, scheduler = make_optimizer(policy.denoiser, cfg.optim.lr, cfg.optim.weight_decay, 0,
                                          cfg.optim.steps, "constant")
    ctx = Context(cfg, policy, reward, optimizer, accelerator)

    # 2. Resume: weights, optimiser, scheduler, RNG and the algorithm's own state (e.g. DDPO's statistics).
    start = 0
    resume_from = checkpoint.latest(run.root) if cfg.resume else None
    if resume_from is not None:
        state = checkpoint.load(resume_from, policy.denoiser, optimizer, scheduler, accelerator)
        start = state["step"]
        algorithm.load_state_dict(state["algorithm"])
        run.truncate_metrics(start)
    run.write_json("config.json", to_dict(cfg))

    # 3. The loop.
    bar = tqdm(range(start, cfg.optim.steps), desc=cfg.algorithm, initial=start, total=cfg.optim.steps,
               disable=not cfg.progress)
    for step in bar:
        began = time.perf_counter()
        generator = step_generator(cfg.seed, step)
        result = algorithm.step(ctx, draw_prompts(prompts, cfg.optim.prompts_per_step, generator), generator)
        scheduler.step()
        metrics = {**result.metrics, "lr": scheduler.get_last_lr()[0], "step_seconds": time.perf_counter() - began}
        run.log_metrics(step + 1, metrics)
        if cfg.log_rollouts:
            write_rollouts(run, step + 1, result, cfg.log_images_per_step)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.optim.steps:
            checkpoint.save(run.root, step + 1, policy.denoiser, optimizer, scheduler,
                            {"step": step + 1, "algorithm": algorithm.state_dict()}, accelerator,
                            keep=cfg.keep_checkpoints)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.4f}")
        if on_step is not None:
            on_step(step + 1)

    # 4. The trained weights and the summary.
    save_final(run, policy.denoiser)
    summary = {"algorithm": cfg.algorithm, "steps": cfg.optim.steps, "reward": reward_summary(run)}
    run.write_json("summary.json", summary)
    run.close()
    return summary
