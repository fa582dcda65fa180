"""A task's tiny main job, full length, on several seeds: what RL adds on the held-out set, and the wall time.

    python benchmarks/main_job.py detection --metric f1@0.5 --metric map50 [--seeds 0 1 2] [--set KEY=VALUE ...]

Each seed runs ``mmrl train TASK`` on the shipped ``configs/TASK/tiny.yaml`` (with ``seed=S`` and the ``--set``
overrides) in a fresh output folder, from a fresh data and model cache (``--cache``, default: a new temporary
folder, so the first seed's wall time includes generating the synthetic data), and reports each metric of
``summary.json`` before and after RL, their difference, and the wall time of the whole command. Every seed is
reported, not the best. Results go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mmrl.cli import main as mmrl


def run_seed(task: str, seed: int, cache: Path, overrides: list[str]) -> tuple[dict, float]:
    """``mmrl train TASK seed=SEED`` in a scratch folder; returns its summary and wall time in seconds."""
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        mmrl(["train", task, f"output_dir={out}/run", f"seed={seed}", f"model.cache_dir={cache}", "progress=false",
              "log_media=false", *overrides])
        seconds = time.perf_counter() - began
        return json.loads((Path(out) / "run" / "summary.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("--metric", action="append", required=True, help="summary metric to report (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--cache", help="data and model cache folder (default: a fresh temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(args.cache or scratch)
        header = ["seed", *(f"{m} before | {m} after | RL adds" for m in args.metric), "wall time"]
        rows = []
        for seed in args.seeds:
            summary, seconds = run_seed(args.task, seed, cache, args.set)
            cells = [str(seed)]
            for m in args.metric:
                before, after = summary["before"][m], summary["after"][m]
                cells.append(f"{before:.3f} | {after:.3f} | {after - before:+.3f}")
            rows.append([*cells, f"{seconds:.0f} s"])
            print(json.dumps({"seed": seed, "before": summary["before"], "after": summary["after"],
                              "seconds": round(seconds)}), flush=True)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * (1 + 3 * len(args.metric) + 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
