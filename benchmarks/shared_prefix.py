"""Group-shared prefix vs full sequences: generation and policy forward+backward on one GRPO step's shapes.

    python benchmarks/shared_prefix.py [--size small] [--side 448] [--prompts 4] [--group 8] [--new-tokens 24]
                                       [--lengths full|uniform] [--only shared-generation]

Builds a tiny Qwen2.5-VL (``mmrl make-tiny``'s factory, cached in a temporary folder), random screenshots of
``side`` x ``side`` pixels, ``prompts`` prompts with ``group`` completions each, and times (median of
``--repeats``):
- generation: HF ``generate`` on every prompt repeated G times vs ``shared_generate`` (one prefill per prompt);
- log-probs with gradients: ``token_stats`` on repeated prompts vs ``shared_token_stats``,
  forward + backward of ``-sum(logp)``; also ``shared_token_stats`` with its completions in one length bucket
  (``rollout.shared.MAX_BUCKETS = 1``), which pads every completion to the longest.
``--lengths uniform`` gives the log-prob passes completions of lengths drawn uniformly from
[new_tokens / 10, new_tokens] (``full``: every completion ``new_tokens`` long). ``--only shared-generation`` times
``shared_generate`` alone, with the same seed at every repeat (so the same tokens are drawn and two checkouts of
mmrl, e.g. ``PYTHONPATH=<a git worktree>``, decode identical completions).
Results and the machine go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mmrl.config import ModelConfig
from mmrl.models.load import load_policy, placeholder_ids
from mmrl.models.tiny import make_tiny
from mmrl.rollout import shared
from mmrl.rollout.hf import encode_prompts, generate, token_stats
from mmrl.rollout.shared import expand_batch, shared_generate, shared_token_stats
from mmrl.types import Sample


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--side", type=int, default=448)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lengths", default="full", choices=["full", "uniform"])
    p.add_argument("--only", choices=["shared-generation"], help="time shared_generate alone, seeded")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny(f"{tmp}/model", family="qwen2_5_vl", size=args.size)
        pixels = args.side * args.side
        model, processor, _ = load_policy(ModelConfig(path=str(path), min_pixels=pixels, max_pixels=pixels))
    rng = np.random.default_rng(0)
    samples = [Sample(id=str(i), prompt="<image>click the blue button", images=[f"{i}.png"]) for i in range(args.prompts)]
    images = [[Image.fromarray(rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8))] for _ in samples]
    batch = encode_prompts(processor, samples, images, family="qwen2_5_vl")
    G, suppress = args.group, placeholder_ids(processor.tokenizer)
    wide = expand_batch(batch, G)
    ids = torch.randint(20, 300, (args.prompts * G, args.new_tokens))
    lengths = (torch.randint(max(1, args.new_tokens // 10), args.new_tokens + 1, (len(ids),))
               if args.lengths == "uniform" else torch.full((len(ids),), args.new_tokens))
    mask = (torch.arange(args.new_tokens)[None] < lengths[:, None]).long()
    print(f"model {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; prompt "
          f"{batch['input_ids'].shape[1]} tokens; {args.prompts} prompts x G={G}; {args.new_tokens} new tokens; "
          f"{torch.get_num_threads()} threads; completion lengths {args.lengths} (mean {lengths.float().mean():.0f})")

    model.eval()
    gen = {"max_new_tokens": args.new_tokens, "suppress_ids": suppress}
    if args.only == "shared-generation":
        drawn = []

        def seeded():
            torch.manual_seed(0)
            drawn.append(int(shared_generate(model, processor, batch, G, **gen).mask.sum()))

        print(f"| shared generation (s) | completion tokens |\n|---|---|\n| {timed(seeded, args.repeats):.3f} "
              f"| {drawn[-1]} |")
        return
    t_full_gen = timed(lambda: generate(model, processor, wide, do_sample=True, **gen), args.repeats)
    t_shared_gen = timed(lambda: shared_generate(model, processor, batch, G, **gen), args.repeats)

    def backward(logprobs):
        model.zero_grad(set_to_none=True)
        (-logprobs().logp.sum()).backward()

    model.train()
    t_full_lp = timed(lambda: backward(lambda: token_stats(model, wide, ids, mask)), args.repeats)
    t_shared_lp = timed(lambda: backward(lambda: shared_token_stats(model, batch, ids, mask, G)), args.repeats)
    buckets, shared.MAX_BUCKETS = shared.MAX_BUCKETS, 1
    t_one_bucket = timed(lambda: backward(lambda: shared_token_stats(model, batch, ids, mask, G)), args.repeats)
    shared.MAX_BUCKETS = buckets
    print("| pass | full sequences (s) | shared prefix, one length bucket (s) | shared prefix (s) | speed-up |\n"
          "|---|---|---|---|---|")
    print(f"| generation | {t_full_gen:.3f} | | {t_shared_gen:.3f} | {t_full_gen / t_shared_gen:.1f}x |")
    print(f"| log-probs fwd+bwd | {t_full_lp:.3f} | {t_one_bucket:.3f} | {t_shared_lp:.3f} "
          f"| {t_full_lp / t_shared_lp:.1f}x |")


if __name__ == "__main__":
    main()
