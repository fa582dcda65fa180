"""One GRPO step's worth of CAD scripts (64) scored with volume IoU: mmrl's sandbox pool against a fresh interpreter
per script, side by side in one run.

* **mmrl**: ``tasks.cad_code.Measurer``, as training uses it: a pool of bubblewrap workers with CadQuery imported
  once, a forked child per script and a second one per measurement (IoU against the reference by OCC booleans);
  the references run first, as in a step.
* **fresh interpreter**: what public CAD evaluators do (``python`` started per script, importing CadQuery, running
  the script and the same ``rewards.cad`` measurement), with as many running at once as the pool has workers.

The 64 scripts are 8 synthetic parts x 8 variants (the reference, dimensions off by 1-3 mm, a syntax error, a
script without ``result``), like a group of a tiny model's completions. Both must give the same IoUs.

    python benchmarks/cad_sandbox.py [--workers 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks import synthetic_cad
from tasks.cad_code import CadData, Measurer

FRESH = """
import io, json, sys
import cadquery as cq
from rewards import cad
job = json.load(open(sys.argv[1]))
scope = cad.script_globals()
try:
    exec(compile(job["script"], "<script>", "exec"), scope)
    print(json.dumps(cad.measure_solid(cad.collect_solid(scope), job["reference"].encode(), samples=0)))
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
"""


def completions(seed: int = 0, parts: int = 8) -> tuple[list[str], list[str]]:
    """64 completions (8 per part) and each one's reference script."""
    rng = random.Random(seed)
    rows = synthetic_cad.generate(parts, seed, ("box", "cylinder", "boss", "plate_with_holes"))
    outputs, references = [], []
    for row in rows:
        code = row["code"]
        variants = [code]
        for _ in range(5):  # dimensions off by a little, as a half-trained policy writes them
            variants.append(re.sub(r"\((\d+), (\d+)", lambda m: f"({int(m[1]) + rng.randint(1, 3)}, {m[2]}", code, 1))
        variants += [code.replace("box(", "box((", 1), code.replace("result =", "shape =")]
        outputs += [f"```python\n{v}\n```" for v in variants]
        references += [code] * len(variants)
    return outputs, references


def run_mmrl(outputs: list[str], references: list[str], workers: int) -> tuple[float, list[float]]:
    measurer = Measurer(CadData(workers=workers, samples=0))
    try:
        measurer.sandbox()  # the pool starts once per run, not per step
        started = time.perf_counter()
        outcomes = measurer.outcomes(outputs, references, chamfer=False)
        seconds = time.perf_counter() - started
    finally:
        measurer.close()
    return seconds, [o.measurement["iou"] if o.measurement else 0.0 for o in outcomes]


def run_fresh(outputs: list[str], references: list[str], workers: int) -> tuple[float, list[float]]:
    from rewards import cad

    measurer = Measurer(CadData(workers=workers, samples=0))  # reference solids (not timed: same for both)
    try:
        breps = [r.value["collected"] for r in measurer.references(references)]
    finally:
        measurer.close()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def one(i: int) -> float:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"script": cad.extract_code(outputs[i]) or "", "reference": breps[i]}, f)
        try:
            out = subprocess.run([sys.executable, "-c", FRESH, f.name], capture_output=True, text=True, env=env,
                                 timeout=60).stdout
        finally:
            os.unlink(f.name)
        return json.loads(out.strip().splitlines()[-1]).get("iou", 0.0)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        ious = list(pool.map(one, range(len(outputs))))
    return time.perf_counter() - started, ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    outputs, references = completions()
    mmrl_times, fresh_times = [], []
    for _ in range(args.repeats):
        seconds, ious = run_mmrl(outputs, references, args.workers)
        mmrl_times.append(seconds)
        fresh_seconds, fresh_ious = run_fresh(outputs, references, args.workers)
        fresh_times.append(fresh_seconds)
        assert all(abs(a - b) < 1e-9 for a, b in zip(ious, fresh_ious)), "the two runs disagree on an IoU"
    m, f = statistics.median(mmrl_times), statistics.median(fresh_times)
    print(json.dumps({"scripts": len(outputs), "workers": args.workers, "mmrl_s": [round(t, 2) for t in mmrl_times],
                      "fresh_interpreter_s": [round(t, 2) for t in fresh_times], "median_mmrl_s": round(m, 2),
                      "median_fresh_s": round(f, 2), "speedup": round(f / m, 1),
                      "mean_iou": round(statistics.fmean(ious), 4)}, indent=2))


if __name__ == "__main__":
    main()
