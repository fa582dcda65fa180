"""Flow-GRPO and AWM on mini-GenEval (issue 21): does RL with the ``geneval`` reward raise the GenEval score of
the tiny pipeline pre-trained on that world?

    python benchmarks/mini_geneval.py flow_grpo [--seeds 0 1 2] [--prompts 60] [--set KEY=VALUE ...]

For each seed: build (once, cached in ``--cache``) the pipeline of ``configs/diffusion/ALGORITHM/mini_geneval.yaml``,
score it, train it with that config (``seed=S`` and the ``--set`` overrides), score the trained weights. A score
is ``mmrl eval geneval``'s on the first ``--prompts`` rows of a held-out mini-GenEval prompt set (seed 1; training
draws from the shipped seed-0 set), 4 images per prompt from the deterministic sampler (the same noise before and
after), judged by the rule-based ``shapes`` detector: the overall score (mean of the six tag accuracies) and the
share of correct images. Every seed is reported, not the best. FK steering against best-of-N is one command of
its own (``mmrl diffusion steer ... --baseline best_of_n``, benchmarks/RESULTS.md). Results go in RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mmrl.config import load_config
from mmrl.diffusion.artifacts import apply_trained
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.pipeline import load_policy
from mmrl.diffusion.sample import write_samples
from mmrl.diffusion.trainer import train
from mmrl.eval.geneval import evaluate, load_layout, summarize
from tasks.mini_geneval import ShapesDetector, prompts

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "diffusion"
IMAGES_PER_PROMPT = 4
EVAL_SEED = 1


def score(policy, rows: list[dict], cfg: DiffusionConfig, folder: Path) -> dict:
    """GenEval's summary of ``IMAGES_PER_PROMPT`` deterministic samples of each row, judged by ``shapes``."""
    write_samples(policy, rows, folder, IMAGES_PER_PROMPT, cfg.sampling.eval_steps, cfg.model.resolution,
                  cfg.sampling.guidance_scale, seed=0, progress=False)
    return summarize(evaluate(load_layout(folder), ShapesDetector(), progress=False))


def run_seed(algorithm: str, seed: int, rows: list[dict], cache: Path, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        cfg = load_config(DiffusionConfig, CONFIGS / algorithm / "mini_geneval.yaml",
                          [f"seed={seed}", f"output_dir={out / 'run'}", f"model.cache_dir={cache}", "progress=false",
                           "log_rollouts=false", "save_every=100000", *overrides])
        before = score(load_policy(cfg.model), rows, cfg, out / "before")
        began = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - began
        policy = load_policy(cfg.model)
        apply_trained(policy, out / "run")
        after = score(policy, rows, cfg, out / "after")
    return {"seed": seed, "before": before, "after": after, "reward": summary["reward"], "seconds": round(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("algorithm", choices=["flow_grpo", "awm"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompts", type=int, default=60, help="held-out prompts scored (default 60)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--cache", default="~/.cache/mmrl", help="where the pre-trained tiny pipeline is cached")
    args = parser.parse_args()
    rows = prompts(args.prompts, seed=EVAL_SEED)
    table = []
    for seed in args.seeds:
        result = run_seed(args.algorithm, seed, rows, Path(args.cache).expanduser(), args.set)
        print(json.dumps(result), flush=True)
        before, after, reward = result["before"], result["after"], result["reward"]
        table.append(f"| {seed} | {before['overall']:.3f} → {after['overall']:.3f} "
                     f"({after['overall'] - before['overall']:+.3f}) | {before['correct_images']:.3f} → "
                     f"{after['correct_images']:.3f} | {reward['first']:.3f} → {reward['last']:.3f} | "
                     f"{result['seconds']} s |")
    print("| seed | GenEval score before → after | correct images | training reward (first → last 5 steps) "
          "| training time |")
    print("|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
