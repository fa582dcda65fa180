"""How long `mmrl demo` takes to open a large run: 1,000 steps x 32 samples (issue 7 asks for under 5 s).

The run is written with the trainer's own writer (``mmrl.store.RunDir``): per step 4 GUI grounding groups of 8
completions over 112x112 screenshots kept under ``media/``, and a ``metrics.jsonl`` line with the usual keys. Then,
in one process:

- ``build``: constructing the Gradio app (``mmrl.demo.app.build_app``);
- ``serve``: starting its server on 127.0.0.1;
- ``page``: from ``driver.get`` in headless Chromium until the page shows the latest step's sample table, its
  rendered screenshot, the reward table and all four training curves (the user-visible "opened");
- ``open``: build + serve + page.

Usage: ``python benchmarks/demo_open.py [--steps 1000] [--groups 4] [--group-size 8] [--repeats 3]``
(needs Debian's chromium and chromium-driver: ``bash .ci/install-browser``).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmrl.store import RunDir
from mmrl.types import Group, Sample


def write_run(root: Path, steps: int, groups: int, group_size: int) -> None:
    rng = random.Random(0)
    shots = root.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    for i in range(16):
        Image.new("RGB", (112, 112), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            shots / f"shot_{i:02d}.png")
    run = RunDir(root)
    for step in range(1, steps + 1):
        batch = []
        for g in range(groups):
            x, y = rng.randrange(10, 80), rng.randrange(10, 80)
            sample = Sample(id=f"{step}-{g}", prompt=f"click the button number {g}",
                            images=[str(shots / f"shot_{rng.randrange(16):02d}.png")], answer=f"({x + 10}, {y + 10})",
                            fields={"gt_box": [x, y, x + 20, y + 20], "scale": [1.0, 1.0], "answer_format": "point"})
            completions = [f"({rng.randrange(112)}, {rng.randrange(112)})" for _ in range(group_size)]
            point = [rng.random() for _ in range(group_size)]
            total = [p + 1 for p in point]
            mean = sum(total) / group_size
            batch.append(Group(sample, completions, {"point": point, "format": [1.0] * group_size}, total,
                               [t - mean for t in total], [False] * group_size, [9] * group_size,
                               [True] * group_size))
        run.log_rollouts(step, batch)
        run.log_metrics(step, {"reward/mean": rng.random() + 1, "reward/std": 0.3, "kl": 0.001 * step,
                               "completion_len/mean": 9.0, "reward/point": rng.random(), "reward/format": 1.0})
    run.write_json("config.json", {"task": "gui_grounding", "data": {"alpha": 0.5}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--window-size=1600,2600"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


OPENED = """
const root = document;
const rows = root.querySelectorAll("#samples-a [role='row'].virtual-row").length;
const img = root.querySelector("#picture-a img");
const rewards = root.querySelectorAll("#rewards-a [role='row'].virtual-row").length;
const plots = ["reward", "kl", "length", "components"].every(
    p => root.querySelector(`#plot-${p} canvas, #plot-${p} svg [role='graphics-symbol']`));
const info = (root.querySelector("#run-info") || {}).innerText || "";
return rows > 0 && img && img.complete && img.naturalWidth > 0 && rewards > 0 && plots && info.includes(arguments[0]);
"""


def measure(root: Path, driver, latest: int) -> dict[str, float]:
    from mmrl.demo.app import build_app

    t0 = time.perf_counter()
    app = build_app(root)
    t1 = time.perf_counter()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, allowed_paths=[str(root)],
               quiet=True)
    t2 = time.perf_counter()
    driver.get("about:blank")
    driver.get(f"http://127.0.0.1:{port}/")
    while not driver.execute_script(OPENED, f"latest step {latest}"):
        if time.perf_counter() - t2 > 120:
            raise TimeoutError("the page did not finish opening in 120 s")
        time.sleep(0.02)
    t3 = time.perf_counter()
    app.close()
    return {"build": t1 - t0, "serve": t2 - t1, "page": t3 - t2, "open": t3 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        t0 = time.perf_counter()
        write_run(root, args.steps, args.groups, args.group_size)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"wrote {args.steps} steps x {args.groups * args.group_size} samples ({size / 2**20:.1f} MiB) "
              f"in {time.perf_counter() - t0:.1f} s")
        driver = chromium()
        try:
            runs = [measure(root, driver, args.steps) for _ in range(args.repeats)]
        finally:
            driver.quit()
    for i, r in enumerate(runs):
        print(f"run {i + 1}: " + "  ".join(f"{k} {v:.2f} s" for k, v in r.items()))
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
                      "steps": args.steps, "samples_per_step": args.groups * args.group_size,
                      "median_open_s": sorted(r["open"] for r in runs)[len(runs) // 2],
                      "best": {k: round(v, 3) for k, v in best.items()}}, indent=1))


if __name__ == "__main__":
    main()
