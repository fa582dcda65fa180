"""The GRPO-family trainer for VLMs, readable top to bottom.

``train(cfg)``: load the task's data, cold-start the policy with SFT (optional), evaluate it ("before"), then
for each RL step: draw prompts, sample G completions each, score them with the weighted rewards, compute
group advantages, and run ``mu`` epochs of clipped policy-gradient updates (with a KL penalty to the reference
when beta > 0); log, checkpoint; finally evaluate again ("after") and write ``summary.json``.

Variants come from the registries in ``mmrl.algorithms`` by name (advantage estimator, policy loss, KL
estimator, loss aggregation); the loop never special-cases a name. One process per device; ``accelerate
launch`` scales it out (each rank takes its share of the prompts, DDP averages the gradients).
"""
from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from mmrl import checkpoint
from mmrl.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from mmrl.config import GRPOConfig, TrainConfig, build, to_dict
from mmrl.data import ImageCache, indices_for_step
from mmrl.errors import ConfigError
from mmrl.evaluate import generate_outputs, score_outputs
from mmrl.models.load import load_policy, placeholder_ids, resolve_path
from mmrl.optim import make_optimizer
from mmrl.registry import get_task
from mmrl.rollout.hf import encode_prompts, generate, sanitize, token_logprobs
from mmrl.sft import cold_start
from mmrl.store import RunDir, claim_run_dir, publish_dir
from mmrl.types import Group, LoadContext, Sample


@dataclass
class Rollouts:
    """One RL step's rollouts, row-aligned: ``samples[i]`` produced completion ``ids[i]``."""

    samples: list[Sample]
    encodings: list  # processor outputs of the prompt rows, one per micro-batch
    ids: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    groups: list[Group]
    dropped_placeholders: int


def select_rewards(available: dict, weights: dict[str, float]) -> dict[str, tuple[Callable, float]]:
    unknown = sorted(set(weights) - set(available))
    if unknown:
        raise ConfigError(f"unknown reward '{unknown[0]}' in config key 'rewards'; valid: {', '.join(available)}")
    return {name: (available[name], w) for name, w in weights.items()}


def score(rewards: dict[str, tuple[Callable, float]], completions: list[str], samples: list[Sample]):
    """Every reward component per completion and their weighted sum."""
    keys = {k for s in samples for k in s.fields}
    fields = {k: [s.fields.get(k) for s in samples] for k in keys}
    parts = {name: [float(v) for v in fn(completions, **fields)] for name, (fn, _) in rewards.items()}
    total = [sum(w * parts[name][i] for name, (_, w) in rewards.items()) for i in range(len(completions))]
    return parts, total


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def rollout(model, processor, samples: list[Sample], images: ImageCache, rewards, cfg: GRPOConfig,
            suppress: list[int], device) -> Rollouts:
    """Sample ``group_size`` completions per prompt, score them, and compute group advantages."""
    G = cfg.group_size
    rows = [s for s in samples for _ in range(G)]
    encodings, outs = [], []
    for sl in micro_batches(len(rows), cfg.micro_batch_size):
        enc = encode_prompts(processor, rows[sl], [images.images(s) for s in rows[sl]]).to(device)
        encodings.append(enc)
        outs.append(generate(model, processor, enc, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                             temperature=cfg.temperature, top_p=cfg.top_p, suppress_ids=suppress))
    pad = processor.tokenizer.pad_token_id
    width = max(o.ids.shape[1] for o in outs)
    ids = torch.cat([F.pad(o.ids, (0, width - o.ids.shape[1]), value=pad) for o in outs])
    mask = torch.cat([F.pad(o.mask, (0, width - o.mask.shape[1])) for o in outs])
    texts = [t for o in outs for t in o.texts]
    truncated = [t for o in outs for t in o.truncated]
    ids, mask, dropped = sanitize(ids, mask, suppress, pad)
    parts, total = score(rewards, texts, rows)
    group_ids = torch.arange(len(samples)).repeat_interleave(G)
    adv = ADVANTAGES.get(cfg.advantage)(torch.tensor(total, dtype=torch.float64), group_ids).float()
    lengths = mask.sum(-1).tolist()
    groups = [
        Group(sample=s, completions=texts[i * G:(i + 1) * G],
              rewards={k: v[i * G:(i + 1) * G] for k, v in parts.items()}, total=total[i * G:(i + 1) * G],
              advantages=adv[i * G:(i + 1) * G].tolist(), truncated=truncated[i * G:(i + 1) * G],
              lengths=lengths[i * G:(i + 1) * G])
        for i, s in enumerate(samples)
    ]
    return Rollouts(rows, encodings, ids, mask, adv, groups, dropped)


def frozen_reference(model, cfg: TrainConfig):
    """A frozen copy of the starting policy when the KL term needs one (full fine-tuning with beta > 0);
    ``None`` otherwise (beta = 0 needs no reference; LoRA disables its adapters instead)."""
    if cfg.grpo.beta > 0 and not cfg.model.lora.enabled:
        return copy.deepcopy(model).requires_grad_(False).eval()
    return None


def reference_context(model, ref_model):
    """Context in which ``model`` computes reference log-probs: adapters off under LoRA, else a frozen copy."""
    if ref_model is not None:
        return ref_model, nullcontext()
    return model, model.disable_adapter()


@torch.no_grad()
def fixed_logprobs(model, ro: Rollouts, cfg: GRPOConfig) -> list[torch.Tensor]:
    """Log-probs of the rollouts under ``model`` without gradients, one tensor per micro-batch."""
    out = []
    for enc, sl in zip(ro.encodings, micro_batches(len(ro.samples), cfg.micro_batch_size)):
        out.append(token_logprobs(model, enc, ro.ids[sl], ro.mask[sl], cfg.temperature))
    return out


def optimise(model, ro: Rollouts, cfg: GRPOConfig, optimizer, scheduler, accelerator, ref_logps) -> dict:
    """``mu`` epochs over the step's rollouts; one optimizer step per epoch, gradients accumulated over
    micro-batches (aggregation uses batch-wide token/sequence counts, so accumulation is exact)."""
    policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
    aggregate = AGGREGATIONS.get(cfg.loss_agg)
    kl_fn = KL_ESTIMATORS.get(cfg.kl_estimator)
    slices = micro_batches(len(ro.samples), cfg.micro_batch_size)
    old_logps = fixed_logprobs(model, ro, cfg) if cfg.mu > 1 else None
    n_tokens, n_seqs, max_len = int(ro.mask.sum()), len(ro.samples), cfg.max_new_tokens
    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
    for _ in range(cfg.mu):
        for k, (enc, sl) in enumerate(zip(ro.encodings, slices)):
            mask = ro.mask[sl].to(accelerator.device)
            logp = token_logprobs(model, enc, ro.ids[sl], mask, cfg.temperature)
            old = old_logps[k] if old_logps is not None else logp.detach()
            adv = ro.advantages[sl].to(logp.device)
            tok_loss = policy_loss(logp, old, adv, cfg.epsilon_low, cfg.epsilon_high)
            if ref_logps is not None:
                kl = kl_fn(logp, ref_logps[k])
                tok_loss = tok_loss + cfg.beta * kl
                totals["kl"] += float((kl.detach() * mask).sum()) / max(n_tokens, 1) / cfg.mu
            loss = aggregate(tok_loss, mask, n_tokens, n_seqs, max_len)
            accelerator.backward(loss)
            ratio = torch.exp(logp.detach() - old)
            clipped = ((ratio < 1 - cfg.epsilon_low) | (ratio > 1 + cfg.epsilon_high)).float()
            totals["clip_frac"] += float((clipped * mask).sum()) / max(n_tokens, 1) / cfg.mu
            totals["loss"] += float(loss.detach()) / cfg.mu
        if cfg.max_grad_norm > 0:
            totals["grad_norm"] += float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)) / cfg.mu
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return totals


def step_metrics(ro: Rollouts, opt: dict, accelerator, lr: float, seconds: float) -> dict[str, float]:
    """Reward, length and loss statistics of one step, reduced over processes."""
    totals = torch.tensor([v for g in ro.groups for v in g.total], dtype=torch.float64, device=accelerator.device)
    totals = accelerator.gather(totals)
    lengths = accelerator.gather(ro.mask.sum(-1).double().to(accelerator.device))
    metrics = {"reward/mean": totals.mean().item(), "reward/std": totals.std().item() if len(totals) > 1 else 0.0,
               "completion_len/mean": lengths.mean().item()}
    for name in ro.groups[0].rewards:
        values = torch.tensor([v for g in ro.groups for v in g.rewards[name]], device=accelerator.device)
        metrics[f"reward/{name}"] = accelerator.gather(values.double()).mean().item()
    trunc = torch.tensor([float(t) for g in ro.groups for t in g.truncated], device=accelerator.device)
    metrics["truncated/frac"] = accelerator.gather(trunc.double()).mean().item()
    local = torch.tensor([opt["loss"], opt["kl"], opt["clip_frac"], float(ro.dropped_placeholders)],
                         device=accelerator.device)
    loss, kl, clip, dropped = accelerator.reduce(local, reduction="mean").tolist()
    metrics.update(loss=loss, kl=kl, clip_frac=clip, grad_norm=opt["grad_norm"], lr=lr,
                   placeholder_tokens_dropped=dropped, step_seconds=seconds)
    return metrics


def run_eval(task, model, processor, samples, images, cfg: TrainConfig, suppress, accelerator, desc) -> dict:
    """Greedy evaluation on the main process (others wait); returns the task's mean scores."""
    result = {}
    if accelerator.is_main_process:
        outputs = generate_outputs(accelerator.unwrap_model(model), processor, samples, images,
                                   batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                                   suppress_ids=suppress, progress=cfg.progress, desc=desc)
        result = score_outputs(task, samples, outputs)
    accelerator.wait_for_everyone()
    return result


def cold_start_model(cfg: TrainConfig, task, train_set, images, run: RunDir, accelerator) -> str:
    """Run the SFT phase (if any) and save its product as a full checkpoint; returns RL's starting model path."""
    model, processor, path = load_policy(cfg.model)
    if cfg.sft.steps == 0:
        return path
    set_seed(cfg.seed)
    cold_start(model, processor, train_set, images, cfg.sft, accelerator, seed=cfg.seed,
               max_grad_norm=cfg.grpo.max_grad_norm, progress=cfg.progress, log=run.log_sft)
    model = accelerator.unwrap_model(model)
    if cfg.model.lora.enabled:
        model = model.merge_and_unload()
    out = run.root / "sft_model"
    if accelerator.is_main_process:
        tmp = run.root / ".sft_model.tmp"
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        publish_dir(tmp, out)
    accelerator.wait_for_everyone()
    return str(out)


def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Run the whole recipe described in the module docstring; returns the summary dict."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    claim_run_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, delete=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    run = RunDir(cfg.output_dir, main=accelerator.is_main_process)
    task = get_task(cfg.task)
    data_cfg = build(task.config_class, cfg.data, prefix="data.")
    ctx = LoadContext(cfg.model.min_pixels, cfg.model.max_pixels, cfg.model.cache_dir)
    with accelerator.main_process_first():
        train_set, eval_set = task.load("train", data_cfg, ctx), task.load("eval", data_cfg, ctx)
        resolved = resolve_path(cfg.model)
    rewards = select_rewards(task.reward_functions(data_cfg), cfg.rewards or task.default_rewards(data_cfg))
    images = ImageCache(cfg.model.min_pixels, cfg.model.max_pixels)
    resume_from = checkpoint.latest(run.root) if cfg.resume else None
    run.write_json("config.json", to_dict(cfg))

    # 1. Cold start and the "before" evaluation (skipped when resuming: both are on disk).
    if resume_from is None:
        start_path = cold_start_model(replace(cfg, model=replace(cfg.model, path=resolved)), task, train_set,
                                      images, run, accelerator)
    else:
        start_path = str(run.root / "sft_model") if (run.root / "sft_model").is_dir() else resolved
    model, processor, _ = load_policy(replace(cfg.model, path=start_path))
    suppress = placeholder_ids(processor.tokenizer)
    before = run.read_json("eval_before.json") if resume_from else None
    if before is None and cfg.eval.before_and_after:
        before = run_eval(task, model, processor, eval_set, images, cfg, suppress, accelerator, "eval before RL")
        run.write_json("eval_before.json", before)

    # 2. RL setup: reference policy, optimizer, schedule, resume.
    g = cfg.grpo
    world, rank = accelerator.num_processes, accelerator.process_index
    if g.prompts_per_step % world:
        raise ConfigError(f"grpo.prompts_per_step={g.prompts_per_step} must be divisible by {world} processes")
    ref_model = frozen_reference(model, cfg)
    optimizer, scheduler = make_optimizer(model, g.lr, g.weight_decay, g.warmup_steps, g.steps * g.mu, g.lr_schedule)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = 0
    if resume_from is not None:
        start = checkpoint.load(resume_from, model, optimizer, scheduler, accelerator)["step"]
        run.truncate_metrics(start)

    # 3. The RL loop.
    model.train()
    bar = tqdm(range(start, g.steps), desc="GRPO", initial=start, total=g.steps,
               disable=not (cfg.progress and accelerator.is_main_process))
    for step in bar:
        t0 = time.perf_counter()
        rows = indices_for_step(len(train_set), step, g.prompts_per_step, cfg.seed)[rank::world]
        policy = accelerator.unwrap_model(model)
        policy.eval()
        ro = rollout(policy, processor, [train_set[i] for i in rows], images, rewards, g, suppress,
                     accelerator.device)
        policy.train()
        ref_logps = None
        if g.beta > 0:
            ref, ctx_mgr = reference_context(policy, ref_model)
            with ctx_mgr:
                ref_logps = fixed_logprobs(ref, ro, g)
        opt = optimise(model, ro, g, optimizer, scheduler, accelerator, ref_logps)
        metrics = step_metrics(ro, opt, accelerator, scheduler.get_last_lr()[0], time.perf_counter() - t0)
        run.log_metrics(step + 1, metrics)
        if cfg.log_rollouts:
            run.log_rollouts(step + 1, gather_object(ro.groups) if world > 1 else ro.groups)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == g.steps:
            checkpoint.save(run.root, step + 1, model, optimizer, scheduler, {"step": step + 1}, accelerator,
                            keep=cfg.keep_checkpoints)
        if on_step is not None:
            on_step(step + 1)

    # 4. Final evaluation, model and summary.
    after = run_eval(task, model, processor, eval_set, images, cfg, suppress, accelerator, "eval after RL")
    summary = {"task": cfg.task, "steps": g.steps, "before": before, "after": after,
               "model": str(Path(start_path)), "output_dir": str(run.root)}
    return finish(run, accelerator.unwrap_model(model), processor, accelerator, summary)


def finish(run: RunDir, model, processor, accelerator, summary: dict) -> dict:
    """Save the final model, add each rank's weight fingerprint, write ``summary.json`` and print before/after."""
    if accelerator.is_main_process:
        model.save_pretrained(run.root / "final")
        processor.save_pretrained(run.root / "final")
    summary["rank_fingerprints"] = gather_object([checkpoint.fingerprint(model)])
    run.write_json("summary.json", summary)
    run.close()
    if accelerator.is_main_process:
        print(json.dumps({"before": summary["before"], "after": summary["after"]}))
    return summary
