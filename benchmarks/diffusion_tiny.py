"""Diffusion algorithms on the tiny pipelines, CPU: does each tiny config raise its reward, and AWM vs Flow-GRPO.

    python benchmarks/diffusion_tiny.py [--part configs|awm|both] [--seeds 0 1 2] [--algorithms awm ...]
                                        [--set KEY=VALUE ...]

``configs``: runs ``configs/diffusion/<algorithm>/tiny.yaml`` for each algorithm and seed (with the given
``--set`` overrides, e.g. ``--algorithms awm --set algorithm_args.timesteps_per_sample=4``) and reports the mean
reward of the first and last 5 steps, their difference, and the wall-clock time.

``awm``: AWM and Flow-GRPO on the same tiny setup: ``awm/tiny.yaml`` and ``flow_grpo/tiny.yaml`` must agree on
everything outside their algorithm settings (``algorithm_args``, ``ppo``) and learning rates (pipeline, prompts,
reward, batch, sampler, steps), which is checked; each learning rate is that algorithm's best of those tried
(benchmarks/RESULTS.md). Each run's reward curve is smoothed with a 5-step moving average; the target is the lower
of the two runs' best smoothed reward, and the table gives the steps and seconds each needed to first reach it.
Results go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mmrl.config import load_config, to_dict
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "diffusion"
ALGORITHMS = ("alignprop", "ddpo", "flow_grpo", "awm")


def run(config: Path, overrides: list[str]) -> tuple[list[dict], dict, float]:
    """Train with ``config`` + ``overrides`` in a scratch directory; returns the metric rows, the trainer's
    summary (its ``reward`` holds the first/last 5-step means) and the wall time."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(DiffusionConfig, config, [f"output_dir={out}", "progress=false", "log_rollouts=false",
                                                    "save_every=100000", *overrides])
        began = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - began
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return rows, summary, seconds


def smoothed(values: list[float], window: int = 5) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def first_reach(curve: list[float], target: float) -> int:
    """1-based step at which ``curve`` first reaches ``target``."""
    return next(i + 1 for i, v in enumerate(curve) if v >= target)


def part_configs(seeds: list[int], algorithms: list[str], overrides: list[str]) -> None:
    print("| algorithm | seed | steps | first 5 | last 5 | last − first | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for algorithm in algorithms:
        for seed in seeds:
            rows, summary, seconds = run(CONFIGS / algorithm / "tiny.yaml", [f"seed={seed}", *overrides])
            first, last = summary["reward"]["first"], summary["reward"]["last"]
            print(f"| {algorithm} | {seed} | {len(rows)} | {first:.4f} | {last:.4f} | {last - first:+.4f} | "
                  f"{seconds:.0f} |", flush=True)


OWN = {"algorithm", "output_dir", "algorithm_args", "ppo", "optim.lr"}
"""Config keys each algorithm sets for itself: its name, run directory, own settings and learning rate."""


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": x}}`` -> ``{"optim.lr": x}``, stopping at the algorithm's own keys (``OWN``)."""
    out = {}
    for key, value in tree.items():
        name = prefix + key
        out.update(flat(value, name + ".") if isinstance(value, dict) and name not in OWN else {name: value})
    return out


def same_setup(a: Path, b: Path) -> None:
    """Raise unless the two configs differ only in the keys of ``OWN``."""
    ca, cb = (flat(to_dict(load_config(DiffusionConfig, p))) for p in (a, b))
    diff = sorted(k for k in ca if k not in OWN and ca[k] != cb[k])
    if diff:
        raise SystemExit(f"{a} and {b} differ in {diff}: not the same setup")


def part_awm(seeds: list[int]) -> None:
    same_setup(CONFIGS / "flow_grpo" / "tiny.yaml", CONFIGS / "awm" / "tiny.yaml")
    print("| seed | target (5-step mean) | Flow-GRPO steps | Flow-GRPO s | AWM steps | AWM s | speed-up (wall) |")
    print("|---|---|---|---|---|---|---|")
    for seed in seeds:
        curves, seconds_per_step = {}, {}
        for algorithm in ("flow_grpo", "awm"):
            rows, _, _ = run(CONFIGS / algorithm / "tiny.yaml", [f"seed={seed}"])
            curves[algorithm] = smoothed([r["reward/mean"] for r in rows])
            seconds_per_step[algorithm] = [r["step_seconds"] for r in rows]
        target = min(max(c) for c in curves.values())
        reach = {a: first_reach(c, target) for a, c in curves.items()}
        wall = {a: sum(seconds_per_step[a][: reach[a]]) for a in curves}
        print(f"| {seed} | {target:.4f} | {reach['flow_grpo']} | {wall['flow_grpo']:.1f} | {reach['awm']} | "
              f"{wall['awm']:.1f} | {wall['flow_grpo'] / wall['awm']:.2f}× |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="both", choices=["configs", "awm", "both"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS,
                        help="configs part only: which tiny configs to run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="configs part only: a config override applied to every run (repeatable)")
    args = parser.parse_args()
    if args.part in ("configs", "both"):
        part_configs(args.seeds, args.algorithms, args.overrides)
    if args.part in ("awm", "both"):
        part_awm(args.seeds)


if __name__ == "__main__":
    main()
