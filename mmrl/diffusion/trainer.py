"""The diffusion RL loop, readable top to bottom.

``train(cfg)``: load the prompts and the rewards; build the algorithm named by ``cfg.algorithm`` with its
``algorithm_args`` (``mmrl.diffusion.algorithms``); load the pipeline (and a frozen reference denoiser when the
algorithm needs one under full fine-tuning, ``mmrl.reference``); then for each step: draw prompts, let the algorithm sample, score and update
(``algorithm.step``; an update with a NaN or infinite loss or gradient is skipped, ``mmrl.nonfinite``), log
metrics and rollouts, checkpoint; finally save the trained weights and write
``summary.json``. Every step reseeds its own generator from ``(seed, step)``, so a resumed run draws the same
prompts and noise as an uninterrupted one.

One process per device; ``accelerate launch`` scales it out data-parallel, as the VLM trainer (``mmrl.trainer``):
every rank draws the step's prompts and takes its share, samples them with noise of its own, and the algorithms
average their gradients over the ranks before each optimiser step (``Context.optimizer_step``; advantages see the
whole step's rewards, ``sample_with_advantages``). Rank 0 alone writes the run directory, logging every rank's
rollouts and the metrics over all of them.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Sequence

import torch
from accelerate.tracking import GeneralTracker
from accelerate.utils import broadcast, broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from mmrl import checkpoint
from mmrl.config import to_dict
from mmrl.diffusion.algorithms import build_algorithm
from mmrl.diffusion.algorithms.base import Context, StepResult, gather_batch, reward_metrics
from mmrl.diffusion.artifacts import save_final, to_png
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.image_rewards import WeightedImageReward
from mmrl.diffusion.pipeline import load_policy
from mmrl.diffusion.prompts import draw_prompts, load_prompts
from mmrl.errors import ConfigError
from mmrl.nonfinite import SkipGuard
from mmrl.optim import make_optimizer
from mmrl.reference import frozen_reference
from mmrl.store import RunDir, atomic_write_text, claim_run_dir
from mmrl.tracking import check_trackers, make_accelerator, start_trackers


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of step ``step`` on rank ``rank``: a pure function of ``(seed, step, rank)`` (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + (rank << 40))


def step_prompts(prompts: list[str], cfg: DiffusionConfig, step: int, accelerator) -> tuple[list[str],
                                                                                            torch.Generator]:
    """This rank's share of step ``step``'s prompts and the generator of its noise. Every rank draws the same
    ``optim.prompts_per_step`` prompts with the step's generator and takes every ``world``-th one from its rank on
    (as the VLM trainer splits its prompts). Rank 0 goes on sampling from that generator, as a single process
    does; every other rank from ``step_generator(seed, step, rank)``: different noise on every rank, all of it
    deterministic."""
    world, rank = accelerator.num_processes, accelerator.process_index
    generator = step_generator(cfg.seed, step)
    drawn = draw_prompts(prompts, cfg.optim.prompts_per_step, generator)
    return drawn[rank::world], generator if rank == 0 else step_generator(cfg.seed, step, rank)


def broadcast_weights(model: torch.nn.Module) -> None:
    """Give every rank rank 0's trainable weights, as DDP does when it wraps a model (LoRA adapters are drawn
    from the global random state, which a rank that built the tiny pipeline has advanced); a no-op in one
    process."""
    for p in model.parameters():
        if p.requires_grad:
            broadcast(p.data, from_process=0)


def gather_result(result: StepResult, accelerator, images: bool) -> StepResult:
    """The step over every rank, as rank 0 logs it: the rows of all ranks in rank order (``gather_batch``; images
    only with ``images``) with their advantages, the reward statistics of all of them and the mean over the ranks
    of every other metric (the same keys on every rank); ``result`` itself in one process."""
    if accelerator.num_processes == 1:
        return result
    batch = gather_batch(result.batch, accelerator, images)
    advantages = None if result.advantages is None else accelerator.gather(result.advantages)
    names = list(result.metrics)
    local = torch.tensor([result.metrics[k] for k in names], dtype=torch.float64, device=accelerator.device)
    means = accelerator.reduce(local, "mean").tolist()
    return StepResult(batch, advantages, {**dict(zip(names, means)), **reward_metrics(batch)})


def image_path(step: int, index: int) -> str:
    return f"rollouts/step_{step:06d}/{index:04d}.png"


def write_rollouts(run: RunDir, step: int, result: StepResult, max_images: int) -> None:
    """``rollouts/step_NNNNNN.jsonl``: one object per prompt group (prompt, image paths relative to the run
    directory, every reward component, total, advantages), and the first ``max_images`` images as PNG. Rank 0
    only (like ``RunDir``'s own methods)."""
    if not run.main:
        return
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


def train(cfg: DiffusionConfig, on_step: Callable[[int], None] | None = None,
          trackers: Sequence[GeneralTracker] = ()) -> dict:
    """Run the loop described in the module docstring; returns the summary dict (on every rank). ``trackers``:
    experiment trackers (accelerate ``GeneralTracker`` objects) that get the metrics besides those ``cfg.log_with``
    names."""
    # 1. Everything that can be wrong in the config fails here, before any model is loaded.
    prompts = load_prompts(cfg.prompts.file, cfg.prompts.list)
    reward = WeightedImageReward([(r.name, r.weight, r.args) for r in cfg.rewards])
    algorithm = build_algorithm(cfg, reward.differentiable)
    cfg.sampling.stochastic_steps()
    check_trackers(cfg.log_with)
    accelerator = make_accelerator(cfg, trackers)
    world = accelerator.num_processes
    if cfg.optim.prompts_per_step % world:
        raise ConfigError(f"optim.prompts_per_step={cfg.optim.prompts_per_step} must be divisible by {world} "
                          "processes")
    set_seed(cfg.seed)
    claim_run_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, delete=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    start_trackers(accelerator, cfg)
    run = RunDir(cfg.output_dir, main=accelerator.is_main_process, log=accelerator.log)
    with accelerator.main_process_first():  # rank 0 builds a tiny pipeline, the others then load it
        policy = load_policy(cfg.model, accelerator.device)
    broadcast_weights(policy.denoiser)
    policy.reference = frozen_reference(policy.denoiser, cfg, algorithm.needs_reference)
    optimizer, scheduler = make_optimizer(policy.denoiser, cfg.optim.lr, cfg.optim.weight_decay, 0,
                                          cfg.optim.steps, "constant")
    guard = SkipGuard(cfg.optim.max_consecutive_skips, "optim", accelerator.is_main_process)
    ctx = Context(cfg, policy, reward, optimizer, accelerator, guard)
    checkpoint.register(accelerator, checkpoint.Trainable(policy.denoiser), optimizer, scheduler)

    # 2. Resume: weights, optimiser, scheduler, RNG and the algorithm's own state (e.g. DDPO's statistics).
    start = 0
    resume_from = checkpoint.resume_point(run.root, accelerator) if cfg.resume else None
    if resume_from is not None:
        state = checkpoint.load(resume_from, accelerator)
        start = state["step"]
        algorithm.load_state_dict(state["algorithm"])
        guard.skipped = state["skipped_steps"]
    if cfg.resume:  # forget what a killed run wrote after its checkpoint
        run.rewind(start)
    run.write_json("config.json", to_dict(cfg))

    # 3. The loop.
    bar = tqdm(range(start, cfg.optim.steps), desc=cfg.algorithm, initial=start, total=cfg.optim.steps,
               disable=not (cfg.progress and accelerator.is_main_process))
    for step in bar:
        began = time.perf_counter()
        mine, generator = step_prompts(prompts, cfg, step, accelerator)
        result = algorithm.step(ctx, mine, generator)
        scheduler.step()  # also after a skipped update: the LR stays a function of the step number
        skipped = guard.end_step(step + 1)
        everyone = gather_result(result, accelerator, images=cfg.log_rollouts)
        metrics = {**everyone.metrics, "skipped_steps": float(guard.skipped), "lr": scheduler.get_last_lr()[0],
                   "step_seconds": time.perf_counter() - began}
        run.log_metrics(step + 1, metrics)
        if cfg.log_rollouts:
            write_rollouts(run, step + 1, everyone, cfg.log_images_per_step)
        guard.stop_if_stuck(step + 1)  # after logging: the faulty steps' metrics and rollouts are on disk
        # No checkpoint after a skipped step: its algorithm state may hold the fault (e.g. DDPO's reward statistics).
        if not skipped and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.optim.steps):
            trainer_state = {"step": step + 1, "algorithm": algorithm.state_dict(), "skipped_steps": guard.skipped}
            checkpoint.save(run.root, step + 1, trainer_state, accelerator, keep=cfg.keep_checkpoints)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.4f}")
        if on_step is not None:
            on_step(step + 1)

    # 4. The trained weights and the summary, with each rank's weight fingerprint (equal when the ranks agree).
    if accelerator.is_main_process:
        save_final(run, policy.denoiser)
    summary = {"algorithm": cfg.algorithm, "steps": cfg.optim.steps,
               "reward": reward_summary(run) if accelerator.is_main_process else None,
               "rank_fingerprints": gather_object([checkpoint.fingerprint(policy.denoiser)])}
    summary = broadcast_object_list([summary])[0]
    run.write_json("summary.json", summary)
    accelerator.end_training()
    return summary
