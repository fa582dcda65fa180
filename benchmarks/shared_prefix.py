"""Group-shared prefix vs full sequences: generation and policy forward+backward on one GRPO step's shapes.

    python benchmarks/shared_prefix.py [--size small] [--side 448] [--prompts 4] [--group 8] [--new-tokens 24]
                                       [--lengths full|uniform] [--only shared-generation|decoding-attention]
                                       [--before CHECKOUT]

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
mmrl, e.g. ``PYTHONPATH=<a git worktree>``, decode identical completions). ``--only decoding-attention`` times one
call of the decoding attention (``rollout.cascade.prefix_shared_attention``, layer 0 of a real prefill's cache,
each row holding ``new_tokens / 2`` keys of its own; best of ``--repeats`` rounds of 200 calls), with every group
full and with a quarter of the rows gone; ``--before CHECKOUT`` adds that checkout's attention (e.g. a ``git
worktree`` of an older commit), loaded from its file, its rounds interleaved with this one's.
Results and the machine go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import importlib.util
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


@torch.no_grad()
def decoding_attention_call(cascade, model, batch, group: int, own: int, rows: int | None):
    """One call of ``cascade``'s decoding attention at layer 0 of ``batch``'s prefill cache, ``group`` rows per
    prompt (the last ``rows`` of them kept when given), each with ``own`` keys of its own."""
    from types import SimpleNamespace

    from mmrl.rollout.shared import prompt_positions, repeat_cache

    cache = model(**batch, position_ids=prompt_positions(model, batch), use_cache=True, logits_to_keep=1).cache
    cascade.share_prompt_cache(cache, batch["attention_mask"], own)
    repeat_cache(cache, len(batch["input_ids"]), group)
    layer = cache.layers[0]
    if rows is not None:
        layer.reorder_cache(torch.arange(len(layer.owner) - rows, len(layer.owner)))
    kv, dim = layer.prompt_keys.shape[1], layer.prompt_keys.shape[-1]
    layer.update(torch.randn(len(layer.owner), kv, own, dim), torch.randn(len(layer.owner), kv, own, dim))
    query = torch.randn(len(layer.owner), model.config.get_text_config().num_attention_heads, 1, dim)
    return lambda: cascade.prefix_shared_attention(SimpleNamespace(layer_idx=0), query, layer.keys, layer.values,
                                                   None, scaling=dim**-0.5, prefix_cache=cache)


def best_of_rounds(calls: dict, repeats: int, n: int = 200) -> dict:
    """Milliseconds per call of each of ``calls``: the best of ``repeats`` rounds of ``n`` calls, the calls'
    rounds interleaved (so a slow spell of the machine hits all of them), after one round to warm up."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(n):
                call()
            best[name] = min(best[name], (time.perf_counter() - start) / n * 1e3)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--side", type=int, default=448)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lengths", default="full", choices=["full", "uniform"])
    p.add_argument("--only", choices=["shared-generation", "decoding-attention"],
                   help="time shared_generate alone, seeded; or one call of the decoding attention")
    p.add_argument("--before", help="with --only decoding-attention: also time CHECKOUT's attention, interleaved")
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
    if args.only == "decoding-attention":
        from mmrl.rollout import cascade

        sides = {"mmrl": cascade}
        if args.before:
            spec = importlib.util.spec_from_file_location("before_cascade", f"{args.before}/mmrl/rollout/cascade.py")
            sides["before"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sides["before"])
        print(f"| groups | {' | '.join(f'{name} attention call (ms)' for name in sides)} |\n|---|{'---|' * len(sides)}")
        for label, rows in [("full", None), ("a quarter of the rows gone", 3 * len(wide["input_ids"]) // 4)]:
            calls = {name: decoding_attention_call(side, model, batch, G, args.new_tokens // 2, rows)
                     for name, side in sides.items()}
            print(f"| {label} | {' | '.join(f'{t:.3f}' for t in best_of_rounds(calls, args.repeats).values())} |")
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
