"""The GRPO-family trainer for VLMs, readable top to bottom.

``train(cfg)``: load the task's data, cold-start the policy with SFT (optional), evaluate it ("before"), then
for each RL step: draw prompts, sample completions (G each, or adaptively), score them with the weighted
rewards, filter groups (dynamic sampling, overlong filtering), compute advantages, and run ``mu`` epochs of
policy-loss updates (with a KL penalty to the reference when beta > 0; an update with a NaN or infinite loss or
gradient is skipped, ``mmrl.nonfinite``); log, checkpoint; finally evaluate again ("after") and write
``summary.json``.

Variants come from the registries in ``mmrl.algorithms`` by name (advantage estimator, policy loss, KL
estimator, token weights, loss aggregation, prompt sampler, rollout strategy; see docs/algorithms.md); the
loop never special-cases a name. One process per device; ``accelerate
launch`` scales it out (each rank takes its share of the prompts, DDP averages the gradients).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate.tracking import GeneralTracker
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from mmrl import checkpoint
from mmrl.algorithms import Algorithm, build_algorithm
from mmrl.algorithms import sampling as sampling_lib
from mmrl.algorithms.advantages import compute_advantages, group_stats
from mmrl.algorithms.entropy import AdaptiveEntropy, entropy_bonus
from mmrl.algorithms.kl import importance_weighted
from mmrl.algorithms.losses import PolicyBatch, offpolicy_guidance, positive_lengths
from mmrl.algorithms.token_weights import TokenBatch, number_token_ids
from mmrl.config import GRPOConfig, TrainConfig, to_dict
from mmrl.data import load_context, media_cache
from mmrl.errors import ConfigError
from mmrl.evaluate import generate_outputs
from mmrl.models.load import load_policy, model_family, placeholder_ids, resolve_path
from mmrl.nonfinite import SkipGuard
from mmrl.optim import make_optimizer
from mmrl.plugins import TASKS
from mmrl.reference import frozen_reference, reference_context
from mmrl.rollout.groups import Rollouts, concat, sample_groups, to_groups
from mmrl.rollout.scoring import select_rewards
from mmrl.rollout.shared import unsupported_reason
from mmrl.sft import cold_start
from mmrl.store import RunDir, claim_run_dir, publish_dir
from mmrl.task import Task, opened, score_outputs
from mmrl.tracking import check_trackers, make_accelerator, start_trackers


@torch.no_grad()
def fixed_logprobs(model, ro: Rollouts, chunks, temperature: float) -> list[torch.Tensor]:
    """Log-probs of the rollouts under ``model`` without gradients, one tensor per micro-batch."""
    return [c.stats(model, ro.ids[c.rows], ro.mask[c.rows], temperature).logp for c in chunks]


def use_shared_prefix(model, mode: str, accelerator) -> bool:
    """Whether log-prob passes use the group-shared prefix; ``auto`` falls back with a one-line notice."""
    if mode == "full":
        return False
    reason = unsupported_reason(model)
    if reason is None:
        return True
    if mode == "shared":
        raise ConfigError(f"grpo.shared_prefix=shared is not possible: {reason}")
    if accelerator.is_main_process:
        print(f"mmrl: shared-prefix log-probs off ({reason}); using full sequences", flush=True)
    return False


def reference_logprobs(policy, ref_model, ro: Rollouts, chunks, temperature: float) -> list[torch.Tensor]:
    """Log-probs of the rollouts under the reference policy (adapters off under LoRA, else the frozen copy)."""
    ref, ctx_mgr = reference_context(policy, ref_model)
    with ctx_mgr:
        return fixed_logprobs(ref, ro, chunks, temperature)


def kl_penalty(policy, ref_model, ro: Rollouts, chunks, g: GRPOConfig, algo: Algorithm) -> torch.Tensor:
    """``-sum_t KL_t`` per completion under the sampling policy: the reward term of ``kl_in: reward``."""
    ref_logps = reference_logprobs(policy, ref_model, ro, chunks, g.temperature)
    logps = fixed_logprobs(policy, ro, chunks, g.temperature)
    per_row = [(algo.kl(lp, ref) * ro.mask[sl].to(lp.device)).sum(-1).cpu()
               for (sl, _, _), lp, ref in zip(chunks, logps, ref_logps)]
    return -torch.cat(per_row).double()


def collect(policy, processor, prompts, train_set, media, rewards, g: GRPOConfig, algo: Algorithm,
            suppress, accelerator, shared: bool, reward_timeout: float | None, step: int) -> Rollouts:
    """Draw this step's prompts (this rank's share) and sample, score and filter their groups. Reward functions
    receive the 0-based RL ``step`` and ``total_steps`` as fields.

    ``rollout: reinforce_ada`` samples adaptively per prompt; ``dynamic_sampling: refill`` draws further prompts
    while too few groups have varied rewards (the decision is taken over all ranks, so they stay in step).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    sampling = dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                    micro_batch_size=g.micro_batch_size, suppress=suppress, device=accelerator.device, shared=shared,
                    answer_slot=g.ground_truth_slot, reward_timeout=reward_timeout,
                    step_info={"step": step, "total_steps": g.steps})

    drawn: list[int] = []  # this rank's dataset indices; group id k is drawn[k]

    def sample(count: int) -> Rollouts:
        mine = prompts.draw(count)[rank::world]
        first = len(drawn)
        drawn.extend(mine)
        draw = lambda batch, n, ids, **overrides: sample_groups(policy, processor, batch, n, ids, media, rewards,
                                                                **{**sampling, **overrides})
        return algo.rollout(draw, [train_set[i] for i in mine], g.group_size, first)

    parts = [sample(g.prompts_per_step)]
    informative = sampling_lib.informative_groups(parts[0].total, parts[0].group_ids)
    for _ in range(g.max_refill_rounds if g.dynamic_sampling == "refill" else 0):
        found = int(accelerator.reduce(torch.tensor(len(informative), device=accelerator.device), "sum"))
        if found >= g.prompts_per_step:
            break
        parts.append(sample(-(-(g.prompts_per_step - found) // world) * world))
        informative += sampling_lib.informative_groups(parts[-1].total, parts[-1].group_ids)
    ro = concat(parts)
    ro.weight = sampling_lib.row_weights(ro.group_ids, ro.truncated, informative, g.dynamic_sampling,
                                         g.overlong_filter, limit=g.prompts_per_step // world)
    rows = [(ro.group_ids == k).nonzero().flatten().tolist() for k in range(len(drawn))]
    outcomes = [(index, ro.total[r].tolist(), [ro.texts[i] for i in r]) for index, r in zip(drawn, rows)]
    prompts.update([o for part in gather_object([outcomes]) for o in part] if world > 1 else outcomes)
    return ro


def optimise(model, ro: Rollouts, chunks, g: GRPOConfig, algo: Algorithm, optimizer, scheduler, accelerator,
             ref_logps, number_ids: torch.Tensor, entropy_ctl: AdaptiveEntropy | None, progress: float,
             guard: SkipGuard) -> dict:
    """``mu`` epochs over the step's rollouts; one optimizer step per epoch, gradients accumulated over
    micro-batches (aggregation uses batch-wide token/sequence counts, so accumulation is exact). ``progress`` (step
    over steps) reaches losses with a schedule. With ``grpo.entropy_coef`` or ``adaptive_entropy`` (TRL's condition),
    the entropy bonus is subtracted over the batch's token count (``entropy_ctl``, the adaptive coefficient, is
    updated after each optimizer step with the epoch's mean entropy over all ranks).

    An epoch whose micro-batch losses or (pre-clip) gradient norm are not all finite on every rank is skipped
    (``guard.allow``): its gradients are zeroed, the optimizer does not step; epochs before it stay applied, later
    ones are tried afresh. The scheduler steps either way, so the LR stays a function of the step number."""
    device = accelerator.device
    old_logps = fixed_logprobs(model, ro, chunks, g.temperature) if g.mu > 1 else None
    loss_mask = ro.mask * ro.weight[:, None].to(ro.mask.dtype)
    n_tokens, n_seqs = int(loss_mask.sum()), int((ro.weight > 0).sum())
    group_mean = group_stats(ro.total, ro.group_ids)[0].float()
    positive_len = positive_lengths(ro.mask.sum(-1), ro.advantages, ro.group_ids)
    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
    bonus = g.entropy_coef != 0 or g.adaptive_entropy
    for _ in range(g.mu):
        losses, entropy_sum = [], 0.0
        coef = entropy_ctl.applied() if entropy_ctl is not None else g.entropy_coef
        for k, chunk in enumerate(chunks):
            sl = chunk.rows
            mask = loss_mask[sl].to(device)
            sync = accelerator.no_sync(model) if k < len(chunks) - 1 else nullcontext()
            with sync:
                stats = chunk.stats(model, ro.ids[sl], mask, g.temperature, entropy=algo.needs_entropy or bonus,
                                    distributions=algo.needs_distributions)
                logp = stats.logp
                batch = PolicyBatch(
                    logp=logp, old_logp=old_logps[k] if old_logps is not None else logp.detach(),
                    advantages=ro.advantages[sl].to(device), mask=mask, rewards=ro.total[sl].float().to(device),
                    group_mean=group_mean[sl].to(device), positive_len=positive_len[sl].to(device),
                    ref_logp=ref_logps[k] if ref_logps is not None else None, progress=progress)
                terms = algo.policy_loss(batch)
                policy_tok = terms.loss
                if ro.offpolicy is not None and ro.offpolicy[sl].any():
                    guided = offpolicy_guidance(logp, batch.advantages, g.ground_truth_gamma)
                    policy_tok = torch.where(ro.offpolicy[sl].to(device)[:, None], guided, policy_tok)
                tok_loss = policy_tok * algo.token_weight(TokenBatch(
                    ids=ro.ids[sl].to(device), mask=mask, group_ids=ro.group_ids[sl].to(device),
                    number_mask=torch.isin(ro.ids[sl], number_ids).to(device),
                    entropy=stats.entropy.detach() if stats.entropy is not None else None, log_dist=stats.log_dist,
                    log_ratio=(logp - batch.old_logp).detach(), advantages=batch.advantages))
                if ref_logps is not None and g.kl_in == "loss":
                    kl = algo.kl(logp, ref_logps[k])
                    tok_loss = tok_loss + g.beta * importance_weighted(kl, logp, batch.old_logp, mask,
                                                                       g.kl_importance_ratio)
                    totals["kl"] += float((kl.detach() * mask).sum()) / max(n_tokens, 1) / g.mu
                loss = algo.aggregate(tok_loss, mask, n_tokens, n_seqs, g.max_new_tokens)
                if bonus:
                    loss = loss - entropy_bonus(stats.entropy, mask, coef, n_tokens)
                    entropy_sum += float((stats.entropy.detach() * mask).sum())
                accelerator.backward(loss)
            if terms.clipped is not None:
                totals["clip_frac"] += float((terms.clipped.float() * mask).sum()) / max(n_tokens, 1) / g.mu
            losses.append(float(loss.detach()))
        totals["loss"] += sum(losses) / g.mu
        norm = accelerator.clip_grad_norm_(model.parameters(), g.max_grad_norm if g.max_grad_norm > 0 else math.inf)
        totals["grad_norm"] += float(norm) / g.mu
        if bonus:  # the epoch's mean token entropy over all ranks
            window = accelerator.reduce(torch.tensor([entropy_sum, n_tokens], dtype=torch.float64, device=device),
                                        "sum").tolist()
            mean_entropy = window[0] / max(window[1], 1)
            totals["entropy/mean"] = totals.get("entropy/mean", 0.0) + mean_entropy / g.mu
        if guard.allow([*losses, norm], accelerator):
            optimizer.step()
            if entropy_ctl is not None:
                entropy_ctl.update(mean_entropy)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if bonus:
        totals["entropy/coef"] = entropy_ctl.coef if entropy_ctl is not None else g.entropy_coef
    return totals


def step_metrics(ro: Rollouts, sampled: int, opt: dict, accelerator, lr: float, seconds: float,
                 skipped_steps: int) -> dict[str, float]:
    """Reward, length and loss statistics of one step, reduced over processes, and ``skipped_steps``: the steps so
    far (this one included) with an update skipped for a non-finite loss or gradient (``mmrl.nonfinite``)."""
    gather = lambda t: accelerator.gather(t.double().to(accelerator.device))  # noqa: E731
    totals, lengths = gather(ro.total), gather(ro.mask.sum(-1))
    metrics = {"reward/mean": totals.mean().item(), "reward/std": totals.std().item() if len(totals) > 1 else 0.0,
               "completion_len/mean": lengths.mean().item()}
    for name, values in {**ro.components, **ro.extra}.items():
        metrics[f"reward/{name}"] = gather(values).mean().item()
    for name, failed in ro.failures.items():
        metrics[f"reward/{name}/failures"] = gather(failed).sum().item()
    metrics["truncated/frac"] = gather(ro.truncated).mean().item()
    metrics["trained/frac"] = gather(ro.weight).mean().item()
    metrics["rollouts/trained"] = float(len(totals))
    metrics["rollouts/sampled"] = accelerator.reduce(torch.tensor(float(sampled), device=accelerator.device),
                                                     "sum").item()
    local = torch.tensor([opt["loss"], opt["kl"], opt["clip_frac"], float(ro.dropped_placeholders)],
                         device=accelerator.device)
    loss, kl, clip, dropped = accelerator.reduce(local, reduction="mean").tolist()
    metrics.update(loss=loss, kl=kl, clip_frac=clip, grad_norm=opt["grad_norm"], lr=lr,
                   placeholder_tokens_dropped=dropped, skipped_steps=float(skipped_steps), step_seconds=seconds)
    metrics.update({k: v for k, v in opt.items() if k.startswith("entropy/")})  # over all ranks already
    return metrics


def run_eval(task: Task, model, processor, samples, media, cfg: TrainConfig, suppress, accelerator, desc) -> dict:
    """Greedy evaluation, the samples spread over the ranks (``generate_outputs``), scored on the main process
    (others wait); returns the task's metrics (``Task.aggregate``) there, ``{}`` elsewhere."""
    outputs = generate_outputs(accelerator.unwrap_model(model), processor, samples, media,
                               batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                               suppress_ids=suppress, progress=cfg.progress, desc=desc)
    result = score_outputs(task, samples, outputs) if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    return result


def cold_start_model(cfg: TrainConfig, task, train_set, media, run: RunDir, accelerator) -> str:
    """Run the SFT phase (if any) and save its product as a full checkpoint; returns RL's starting model path."""
    model, processor, path = load_policy(cfg.model)
    if cfg.sft.steps == 0:
        return path
    set_seed(cfg.seed)
    cold_start(model, processor, train_set, media, cfg.sft, accelerator, seed=cfg.seed,
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


def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None,
          trackers: Sequence[GeneralTracker] = ()) -> dict:
    """Run the whole recipe described in the module docstring; returns the summary dict. The task is open
    (``Task.open``) for the whole run and closed at its end, also on error. ``trackers``: experiment trackers
    (accelerate ``GeneralTracker`` objects) that get the metrics besides those ``cfg.log_with`` names."""
    if not cfg.task:
        raise ConfigError(f"config key 'task' is required; valid: {', '.join(TASKS.names())}")
    algo = build_algorithm(cfg.grpo)  # unknown names and hyperparameters fail here, before any work
    check_trackers(cfg.log_with)
    if cfg.grpo.ground_truth_slot and (cfg.grpo.rollout != "fixed" or cfg.grpo.group_size < 2):
        raise ConfigError("grpo.ground_truth_slot needs grpo.rollout=fixed and grpo.group_size >= 2")
    if cfg.grpo.entropy_coef_min > cfg.grpo.entropy_coef_max:
        raise ConfigError(f"grpo.entropy_coef_min={cfg.grpo.entropy_coef_min} must be at most "
                          f"grpo.entropy_coef_max={cfg.grpo.entropy_coef_max}")
    with opened(cfg.task, cfg.data) as (task, data_cfg):
        return run_recipe(cfg, task, data_cfg, algo, on_step, trackers)


def run_recipe(cfg: TrainConfig, task: Task, data_cfg, algo: Algorithm, on_step: Callable[[int], None] | None,
               trackers: Sequence[GeneralTracker] = ()):
    """Cold start, "before" evaluation, the RL loop and the "after" evaluation of an opened task."""
    g = cfg.grpo
    accelerator = make_accelerator(cfg, trackers)
    set_seed(cfg.seed)
    claim_run_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, delete=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    start_trackers(accelerator, cfg)
    run = RunDir(cfg.output_dir, main=accelerator.is_main_process, log=accelerator.log)
    family = model_family(cfg.model)  # its resize factor and coordinate convention shape the samples
    ctx = load_context(cfg.model, family)
    with accelerator.main_process_first():
        train_set, eval_set = task.load("train", data_cfg, ctx), task.load("eval", data_cfg, ctx)
        resolved = resolve_path(cfg.model)
    rewards = select_rewards(task.reward_functions(data_cfg), cfg.rewards or task.default_rewards(data_cfg),
                             cfg.reward_args)
    media = media_cache(cfg.model, family)
    resume_from = checkpoint.resume_point(run.root, accelerator) if cfg.resume else None
    if cfg.resume:  # forget what a killed run wrote after its checkpoint; without one the cold start runs again
        run.rewind(checkpoint.step_of(resume_from) if resume_from else 0, cold_start=resume_from is None)
    run.write_json("config.json", to_dict(cfg))

    # 1. Cold start and the "before" evaluation (skipped when resuming: both are on disk).
    if resume_from is None:
        start_path = cold_start_model(replace(cfg, model=replace(cfg.model, path=resolved)), task, train_set,
                                      media, run, accelerator)
    else:
        start_path = str(run.root / "sft_model") if (run.root / "sft_model").is_dir() else resolved
    model, processor, _ = load_policy(replace(cfg.model, path=start_path))
    suppress = placeholder_ids(processor.tokenizer)
    number_ids = number_token_ids(processor.tokenizer)
    before = run.read_json("eval_before.json") if resume_from else None
    if before is None and cfg.eval.before_and_after:
        before = run_eval(task, model, processor, eval_set, media, cfg, suppress, accelerator, "eval before RL")
        run.write_json("eval_before.json", before)

    # 2. RL setup: reference policy, optimizer, schedule, prompt sampler, guard against non-finite updates, resume.
    world = accelerator.num_processes
    if g.prompts_per_step % world:
        raise ConfigError(f"grpo.prompts_per_step={g.prompts_per_step} must be divisible by {world} processes")
    ref_model = frozen_reference(model, cfg, g.beta > 0 or algo.needs_reference)
    optimizer, scheduler = make_optimizer(model, g.lr, g.weight_decay, g.warmup_steps, g.steps * g.mu, g.lr_schedule)
    shared = use_shared_prefix(model, g.shared_prefix, accelerator)
    accelerator.free_memory()  # forget the SFT model and optimizer: checkpoints hold RL's alone
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoint.register(accelerator, scheduler)  # not prepared: accelerate would step it once per process
    prompts = algo.prompt_sampler(len(train_set), cfg.seed)
    guard = SkipGuard(g.max_consecutive_skips, "grpo", accelerator.is_main_process)
    entropy_ctl = AdaptiveEntropy(g.entropy_coef, g.entropy_target, g.entropy_coef_delta, g.entropy_coef_min,
                                  g.entropy_coef_max) if g.adaptive_entropy else None
    advantage_state: dict = {}
    start = 0
    if resume_from is not None:
        state = checkpoint.load(resume_from, accelerator)
        start, advantage_state = state["step"], state["advantage_state"]
        prompts.load_state_dict(state["prompt_sampler"])
        guard.skipped = state["skipped_steps"]
        if entropy_ctl is not None and state.get("entropy_control"):
            entropy_ctl.load_state_dict(state["entropy_control"])

    # 3. The RL loop.
    model.train()
    bar = tqdm(range(start, g.steps), desc="GRPO", initial=start, total=g.steps,
               disable=not (cfg.progress and accelerator.is_main_process))
    for step in bar:
        t0 = time.perf_counter()
        policy = accelerator.unwrap_model(model)
        policy.eval()
        ro = collect(policy, processor, prompts, train_set, media, rewards, g, algo, suppress, accelerator, shared,
                     cfg.reward_timeout, step)
        policy.train()
        components = dict(ro.components)
        if g.beta > 0 and g.kl_in == "reward":
            ro.extra["kl_penalty"] = components["kl_penalty"] = kl_penalty(
                policy, ref_model, ro, ro.chunks(processor, media, g.micro_batch_size, accelerator.device, shared),
                g, algo)
        weights = {**{name: w for name, (_, w) in rewards.items()}, "kl_penalty": g.beta}
        ro.advantages = compute_advantages(components, weights, ro.group_ids, algo.advantage, g.reward_combine,
                                           advantage_state, lengths=ro.mask.sum(-1), keep=ro.keep).float()
        sampled = len(ro)
        if ro.keep is not None:  # Reinforce-Ada, ReMax: train on the chosen rows, after all samples set the baseline
            rows = ro.keep.nonzero().flatten()
            ro = ro.subset(rows[torch.argsort(ro.group_ids[rows], stable=True)])  # groups contiguous again
        chunks = ro.chunks(processor, media, g.micro_batch_size, accelerator.device, shared)
        ref_logps = None
        if (g.beta > 0 and g.kl_in == "loss") or algo.needs_reference:
            ref_logps = reference_logprobs(policy, ref_model, ro, chunks, g.temperature)
        opt = optimise(model, ro, chunks, g, algo, optimizer, scheduler, accelerator, ref_logps, number_ids,
                       entropy_ctl, step / g.steps, guard)
        skipped = guard.end_step(step + 1)
        metrics = step_metrics(ro, sampled, opt, accelerator, scheduler.get_last_lr()[0], time.perf_counter() - t0,
                               guard.skipped)
        run.log_metrics(step + 1, metrics)
        if cfg.log_rollouts:
            groups = to_groups(ro)
            groups = [x for part in gather_object([groups]) for x in part] if world > 1 else groups
            run.log_rollouts(step + 1, groups, media=cfg.log_media)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.4f}")
        guard.stop_if_stuck(step + 1)  # after logging: the faulty steps' metrics and rollouts are on disk
        # No checkpoint after a skipped step: its trainer state may hold the fault (e.g. a NaN in BNPO's statistics).
        if not skipped and ((step + 1) % cfg.save_every == 0 or step + 1 == g.steps):
            trainer_state = {"step": step + 1, "advantage_state": advantage_state,
                             "prompt_sampler": prompts.state_dict(), "skipped_steps": guard.skipped,
                             "entropy_control": entropy_ctl.state_dict() if entropy_ctl is not None else None}
            checkpoint.save(run.root, step + 1, trainer_state, accelerator, keep=cfg.keep_checkpoints)
        if on_step is not None:
            on_step(step + 1)

    # 4. Final evaluation, model and summary.
    after = None
    if cfg.eval.before_and_after:
        after = run_eval(task, model, processor, eval_set, media, cfg, suppress, accelerator, "eval after RL")
    summary = {"task": cfg.task, "steps": g.steps, "before": before, "after": after,
               "model": str(Path(start_path)), "output_dir": str(run.root)}
    return finish(run, accelerator.unwrap_model(model), processor, accelerator, summary)


def finish(run: RunDir, model, processor, accelerator, summary: dict) -> dict:
    """Save the final model, add each rank's weight fingerprint, write ``summary.json``, end the trackers' run and
    print before/after."""
    if accelerator.is_main_process:
        model.save_pretrained(run.root / "final")
        processor.save_pretrained(run.root / "final")
    summary["rank_fingerprints"] = gather_object([checkpoint.fingerprint(model)])
    run.write_json("summary.json", summary)
    accelerator.end_training()
    if accelerator.is_main_process:
        print(json.dumps({"before": summary["before"], "after": summary["after"]}))
    return summary
