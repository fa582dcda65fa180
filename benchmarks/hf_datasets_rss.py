"""Peak memory of loading a large image dataset through ``mmrl.hf_data`` (issue 25): it must stay under 1 GB.

    python benchmarks/hf_datasets_rss.py [--rows 20000] [--side 160] [--keep DIR] [--no-append]

Writes a synthetic GUI-grounding dataset of ``rows`` random-noise ``side`` x ``side`` PNG screenshots (embedded as
a ``datasets.Image`` column, with instruction and bbox columns) once as a ``save_to_disk`` folder and once as a
parquet file, then, in a fresh subprocess per source, reads it into the task's records exactly as training does
(``mmrl.hf_data.read_records("gui_grounding", ...)``: memory-mapped Arrow, images written undecoded to the cache)
and reports the subprocess's peak RSS (``VmHWM``), its peak after the imports alone, and the time. Noise does
not compress, so the decoded pixels (``rows * side * side * 3`` bytes) and the files are about as large as each
other: over 1 GB at the defaults, so a loader that held the images in RAM would fail the bound. The result is
appended (one write) to benchmarks/RESULTS.md with the command.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

LIMIT_MIB = 1024
RESULTS = Path(__file__).with_name("RESULTS.md")


def peak_mib() -> float:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: Linux keeps that across ``exec``, so a
    subprocess would report its parent's peak at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def measure(dataset: str, cache: str) -> dict:
    """In this (fresh) process: read the records of ``dataset`` and report memory and time."""
    from mmrl.hf_data import HFSource, read_records

    baseline = peak_mib()
    start = time.perf_counter()
    records = read_records("gui_grounding", HFSource(dataset=dataset, split="train"), cache)
    return {"rows": len(records), "seconds": round(time.perf_counter() - start, 1),
            "import_rss_mib": round(baseline), "peak_rss_mib": round(peak_mib())}


def rows(n: int, side: int):
    """Rows of random-noise screenshots with a box and an instruction each."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
        x, y = (int(v) for v in rng.integers(0, side - 20, 2))
        yield {"image": {"bytes": buffer.getvalue(), "path": None}, "instruction": f"click element {i}",
               "bbox": [x, y, x + 20, y + 20]}


def write_datasets(folder: Path, n: int, side: int) -> dict[str, str]:
    """The dataset as a ``save_to_disk`` folder and as one parquet file."""
    from datasets import Dataset, Features, Image, List, Value

    features = Features(image=Image(), instruction=Value("string"), bbox=List(Value("float64")))
    ds = Dataset.from_generator(rows, gen_kwargs={"n": n, "side": side}, features=features,
                                cache_dir=str(folder / "hf-cache"))
    ds.save_to_disk(str(folder / "saved"))
    ds.to_parquet(str(folder / "data.parquet"))
    return {"save_to_disk": str(folder / "saved"), "parquet": str(folder / "data.parquet")}


def child(dataset: str, folder: Path, name: str) -> dict:
    """``measure`` in a fresh process, with empty ``datasets`` and mmrl caches (a parquet file is converted)."""
    for cache in (folder / f"hf-cache-{name}", folder / f"mmrl-{name}"):
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(folder / f"hf-cache-{name}"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", dataset, "--cache", str(folder / f"mmrl-{name}")],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict], n: int, side: int, disk_mib: float, argv: list[str]) -> str:
    lines = ["", f"## Peak RSS of loading a {n:,}-row image dataset with `mmrl.hf_data` (issue 25)", "",
             f"Machine: {os.cpu_count()} cores, {os.uname().sysname}. Command:", "", "```bash",
             " ".join(["python benchmarks/hf_datasets_rss.py", *argv]), "```", "",
             textwrap.fill(f"{n} rows of {side}x{side} random-noise PNG screenshots in a `datasets.Image` column "
                           f"({disk_mib:.0f} MiB of encoded images; {n * side * side * 3 / 2**20:.0f} MiB decoded), "
                           "read into gui_grounding records in a fresh process per source. Bound: peak RSS under "
                           f"{LIMIT_MIB} MiB.", 118), "",
             "| source | rows | load (s) | peak RSS after imports (MiB) | peak RSS (MiB) | under bound |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['rows']} | {r['seconds']} | {r['import_rss_mib']} | {r['peak_rss_mib']} | "
                     f"{'yes' if r['peak_rss_mib'] < LIMIT_MIB else '**no**'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--side", type=int, default=160)
    parser.add_argument("--keep", help="write the datasets here, or reuse those an earlier run wrote there with the "
                                       "same --rows and --side (default: a temporary folder, removed after)")
    parser.add_argument("--no-append", action="store_true", help="print the result only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.cache)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        paths = {"save_to_disk": str(folder / "saved"), "parquet": str(folder / "data.parquet")}
        if not all(Path(p).exists() for p in paths.values()):  # --keep: written by an earlier run
            paths = write_datasets(folder, args.rows, args.side)
        disk = sum(f.stat().st_size for f in Path(paths["save_to_disk"]).glob("*.arrow")) / 2**20
        results = {name: child(path, folder, name.replace("_", "-")) for name, path in paths.items()}
    argv = [a for a in sys.argv[1:] if a != "--no-append"]
    text = report(results, args.rows, args.side, disk, argv)
    print(text)
    if not args.no_append:
        with open(RESULTS, "a", encoding="utf-8") as f:  # one append: other processes may append too
            f.write(text)
    return 0 if all(r["peak_rss_mib"] < LIMIT_MIB for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
