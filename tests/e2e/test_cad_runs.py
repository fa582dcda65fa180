"""CAD code end to end on the tiny Qwen2.5-VL (CPU, seconds): the main job's shipped config shortened, and a run whose
reference scripts are hostile (they run in the sandbox like the model's): training goes on and scores them 0. The
full-length main job is a benchmark (``benchmarks/main_job.py cad_code``, result in benchmarks/RESULTS.md)."""
from __future__ import annotations

import json

import pytest

from mmrl.cli import main
from mmrl.sandbox import available

pytest.importorskip("cadquery")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="bubblewrap is not installed (.ci/install-sandbox)")]

SHORT = ["progress=false", "data.synthetic.n_train=24", "data.synthetic.n_eval=6", "sft.steps=3", "sft.batch_size=4",
         "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=24",
         "grpo.micro_batch_size=8", "eval.max_new_tokens=24", "save_every=1", "data.workers=1", "data.samples=64"]


def test_shipped_cad_config_shortened_writes_before_and_after(tiny_cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(["train", "cad_code", f"output_dir={run_dir}", f"model.cache_dir={tiny_cache}", *SHORT])
    summary = json.loads((run_dir / "summary.json").read_text())
    for phase in ("before", "after"):
        assert {"executable", "iou", "chamfer_mean", "chamfer_median", "n"} <= set(summary[phase])
        assert summary[phase]["n"] == 6 and 0 <= summary[phase]["iou"] <= 1
    groups = [json.loads(x) for x in (run_dir / "rollouts" / "step_000002.jsonl").read_text().splitlines()]
    assert set(groups[0]["rewards"]) == {"executable", "iou"}
    assert all(g["answer"].startswith("```python\nimport cadquery as cq") for g in groups)
    assert '"iou"' in capsys.readouterr().out
    parts = next((tiny_cache / "data").glob("cad_synthetic-eval-*/eval.jsonl"))
    main(["eval", "cad", "--data", str(parts), "--model", str(run_dir / "final"), "--workers", "1",
          "--max-new-tokens", "24", "--output", str(tmp_path / "metrics.json")])
    assert '"n": 6' in (tmp_path / "metrics.json").read_text()


def test_training_goes_on_when_the_scripts_are_hostile(tiny_cache, tmp_path):
    hostile = ["import os\nwhile True:\n    os.fork()", "import time\ntime.sleep(30)", "x = bytearray(8 << 30)",
               "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
               "import cadquery as cq\nresult = cq.Workplane('XY').box(4, 5, 6)"]
    data = tmp_path / "parts.jsonl"
    data.write_text("".join(json.dumps({"id": i, "description": f"part {i}", "code": code}) + "\n"
                            for i, code in enumerate(hostile)))
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="reference script builds no solid"):
        main(["train", "cad_code", f"output_dir={run_dir}", f"model.cache_dir={tiny_cache}", *SHORT,
              f"data.train={data}", f"data.eval={data}", "data.limits.timeout_s=1.0", "data.limits.cpu_s=1",
              "grpo.prompts_per_step=5", "grpo.steps=1"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["after"]["n"] == 5
    groups = [json.loads(x) for x in (run_dir / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    assert len(groups) == 5 and all(v == 0.0 for g in groups for v in g["rewards"]["iou"])
