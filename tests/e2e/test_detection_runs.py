"""Detection and REC end to end on the tiny Qwen2.5-VL (CPU, seconds each): the main job's shipped config shortened,
the trainer's step fields reaching rewards, and a REC run. The full-length main job is a benchmark
(``benchmarks/detection_main_job.py``, result in benchmarks/RESULTS.md)."""
from __future__ import annotations

import json

import pytest

from mmrl.cli import main
from mmrl.config import TrainConfig, load_config
from mmrl.plugins import REWARDS
from mmrl.trainer import train

pytestmark = pytest.mark.slow

SHORT = ["progress=false", "data.synthetic.n_train=24", "data.synthetic.n_eval=6", "sft.steps=3", "sft.batch_size=4",
         "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=24",
         "grpo.micro_batch_size=8", "eval.max_new_tokens=24", "save_every=1"]


def test_shipped_detection_config_shortened_writes_before_and_after(tiny_cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(["train", "detection", f"output_dir={run_dir}", f"model.cache_dir={tiny_cache}", *SHORT])
    summary = json.loads((run_dir / "summary.json").read_text())
    for phase in ("before", "after"):
        metrics = summary[phase]
        assert {"map", "map50", "map75", "precision@0.5", "recall@0.5", "f1@0.5", "unparsable"} <= set(metrics)
        assert metrics["n"] == 6 and 0 <= metrics["f1@0.5"] <= 1
    groups = [json.loads(x) for x in (run_dir / "rollouts" / "step_000002.jsonl").read_text().splitlines()]
    assert {"precision", "recall", "format", "dip_accuracy"} == set(groups[0]["rewards"])
    assert all(len(g["completions"]) == 4 for g in groups)
    gt = [json.loads(g["answer"]) for g in groups]  # the SFT target is the task's own JSON answer
    assert all(len(boxes) == len(g["fields"]["gt_boxes"]) for boxes, g in zip(gt, groups))
    assert '"f1@0.5"' in capsys.readouterr().out


def test_rewards_receive_the_step_and_total_steps(tiny_cache, tmp_path):
    seen: list[tuple[list, list]] = []

    def probe(completions, step=None, total_steps=None, **_):
        seen.append((step, total_steps))
        return [0.0] * len(completions)

    REWARDS.register("step_probe", probe)
    try:
        train(load_config(TrainConfig, None, ["task=detection", f"output_dir={tmp_path / 'run'}",
                                               f"model.cache_dir={tiny_cache}", *SHORT, "grpo.steps=3",
                                               "eval.before_and_after=false", "rewards={step_probe: 1.0, format: 1.0}"]))
    finally:
        REWARDS.unregister("step_probe")
    assert [(set(steps), set(totals)) for steps, totals in seen] == [({0}, {3}), ({1}, {3}), ({2}, {3})]


def test_rec_run_and_eval_rec_with_the_trained_model(tiny_cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(["train", "rec", f"output_dir={run_dir}", f"model.cache_dir={tiny_cache}", *SHORT])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"acc@0.5", "miou", "unparsable", "n"} <= set(summary["after"])
    rec_file = next((tiny_cache / "data").glob("detection_synthetic-eval-*/rec_eval.jsonl"))
    main(["eval", "rec", "--data", str(rec_file), "--model", str(run_dir / "final"), "--max-new-tokens", "24",
          "--coords", "resized", "--min-pixels", "3136", "--max-pixels", "3136"])
    out = capsys.readouterr().out
    assert "acc@0.5" in out and "miou" in out

