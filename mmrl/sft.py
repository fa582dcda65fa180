"""Supervised cold start: next-token loss on the task's ground-truth answers before RL.

CAD-RL and TempSamp-R1 warm-start the policy this way: a small or fresh model rarely produces the answer
format by chance, and RL needs some completions to reward.
"""
from __future__ import annotations

from tqdm.auto import tqdm

from mmrl.config import SFTConfig
from mmrl.data import MediaCache, indices_for_step
from mmrl.optim import make_optimizer
from mmrl.rollout.hf import encode_answers, token_logprobs
from mmrl.types import Sample


def sft_loss(model, processor, samples: list[Sample], media: MediaCache, device):
    """Mean negative log-likelihood of the answers' tokens (EOS included) given the prompts."""
    batch = media.encode(processor, samples).to(device)
    ids, mask = encode_answers(processor.tokenizer, [s.answer for s in samples])
    logp = token_logprobs(model, batch, ids, mask)
    return -logp.sum() / mask.to(logp.device).sum()


def cold_start(model, processor, samples: list[Sample], media: MediaCache, cfg: SFTConfig, accelerator, *,
               seed: int, max_grad_norm: float, progress: bool, log) -> None:
    """Run ``cfg.steps`` SFT steps in place; ``log(step, metrics)`` receives the loss of each step."""
    optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps, "constant")
    model, optimizer = accelerator.prepare(model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    model.train()
    bar = tqdm(range(cfg.steps), desc="cold start (SFT)", disable=not (progress and accelerator.is_main_process))
    for step in bar:
        rows = indices_for_step(len(samples), step, cfg.batch_size, seed)[rank::world]
        loss = sft_loss(model, processor, [samples[i] for i in rows], media, accelerator.device)
        accelerator.backward(loss)
        if max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = accelerator.reduce(loss.detach(), reduction="mean").item()
        bar.set_postfix(loss=f"{value:.3f}")
        log(step + 1, {"sft/loss": value, "sft/lr": scheduler.get_last_lr()[0]})
