"""End-to-end video temporal grounding on the tiny Qwen2.5-VL (CPU, seconds each): training with TempSamp-R1's
ground-truth slot, variance-aware selection into a filtered dataset, and ``mmrl eval charades --model``."""
from __future__ import annotations

import json

import pytest

from mmrl.cli import main
from mmrl.config import TrainConfig, build, load_config
from mmrl.eval.charades import load_annotations
from mmrl.trainer import train
from tasks.temporal_grounding import TemporalGroundingData, synthetic_annotations

pytest.importorskip("decord")
pytestmark = pytest.mark.slow


@pytest.fixture()
def video_run(tiny_cache, tmp_path):
    """Overrides for a seconds-long temporal grounding run on 4-second synthetic videos."""
    return [
        "task=temporal_grounding", f"output_dir={tmp_path / 'run'}", f"model.cache_dir={tiny_cache}",
        "model.video.max_frames=8", "model.video.min_pixels=3136", "model.video.max_pixels=3136",
        "model.video.total_pixels=25088", "progress=false", "data.synthetic.n_train=6", "data.synthetic.n_eval=2",
        "data.synthetic.duration=[4.0, 4.0]", "data.synthetic.min_event=1.0", "sft.steps=2", "sft.batch_size=4",
        "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=8",
        "grpo.micro_batch_size=8", "eval.max_new_tokens=8", "save_every=1",
    ]


def test_ground_truth_slot_joins_each_group(video_run, tmp_path):
    summary = train(load_config(TrainConfig, None, video_run + ["grpo.ground_truth_slot=true", "grpo.mu=2",
                                                                "grpo.advantage=tempsamp"]))
    assert set(summary["before"]) >= {"miou", "r1@0.3", "r1@0.5", "r1@0.7", "parsed", "n"}
    assert 0 <= summary["after"]["miou"] <= 1 and summary["after"]["n"] == 2
    groups = [json.loads(x) for x in (tmp_path / "run" / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    for g in groups:
        assert g["offpolicy"] == [False, False, False, True]
        assert g["completions"][3] == g["answer"]  # the ground truth, scored like the samples
        assert g["rewards"]["iou"][3] == 1.0 and g["rewards"]["format"][3] == 1.0
        assert g["videos"][0].endswith(".mp4") and len(g["fields"]["frame_times"]) == 8
        assert max(g["total"]) == g["total"][3] and g["advantages"][3] >= max(g["advantages"][:3])


def test_ground_truth_slot_needs_fixed_rollouts(video_run):
    from mmrl.errors import ConfigError

    with pytest.raises(ConfigError, match="ground_truth_slot"):
        train(load_config(TrainConfig, None, video_run + ["grpo.ground_truth_slot=true", "grpo.rollout=reinforce_ada"]))


def test_select_keeps_informative_items_then_eval_charades(video_run, tiny_cache, tmp_path):
    overrides = [o for o in video_run if o.startswith(("model.", "data.", "grpo.max_new", "progress"))]
    stats, kept = tmp_path / "stats.jsonl", tmp_path / "kept" / "train.txt"
    main(["select", "temporal_grounding", *overrides, "--k", "4", "--output", str(stats), "--keep", str(kept)])
    rows = [json.loads(x) for x in stats.read_text().splitlines()]
    informative = sum(r["std"] > 0 for r in rows)
    assert len(rows) == 6
    if informative:
        assert len(load_annotations(kept)[0]) == informative
    else:  # an empty annotation file would not load: none is written
        assert not kept.exists()

    # the untrained tiny model through `mmrl eval charades --model` on the synthetic training annotations
    cfg = load_config(TrainConfig, None, video_run)
    annotations = synthetic_annotations(build(TemporalGroundingData, cfg.data).synthetic, "train", str(tiny_cache))
    metrics = tmp_path / "metrics.json"
    main(["eval", "charades", "--annotations", str(annotations), "--videos", str(annotations.parent / "videos"),
          "--model", str(tiny_cache / "models" / "tiny-qwen2_5_vl-tiny"), "--output", str(metrics), "--max-new-tokens",
          "8", "--video", "max_frames=8", "min_pixels=3136", "max_pixels=3136", "total_pixels=25088"])
    result = json.loads(metrics.read_text())
    assert {"r1@0.3", "r1@0.5", "r1@0.7", "miou"} <= set(result) and 0 <= result["miou"] <= 1


def test_ground_truth_slot_first_step_is_the_same_with_shared_and_full_prompts(video_run, tmp_path, hf_sampling):
    # The shared path keeps generation's prompt encodings (one per group, widened to the answer slot); the full
    # path encodes every row again. Step 1 has the same weights and rollouts (``hf_sampling``), so loss and gradient
    # must agree.
    def first_step(mode: str) -> dict:
        overrides = [o.replace("/run", f"/{mode}") for o in video_run]
        train(load_config(TrainConfig, None, overrides + ["grpo.ground_truth_slot=true", "grpo.mu=2",
                                                          "grpo.steps=1", f"grpo.shared_prefix={mode}"]))
        return json.loads((tmp_path / mode / "metrics.jsonl").read_text().splitlines()[0])

    shared, full = first_step("shared"), first_step("full")
    assert shared["loss"] == pytest.approx(full["loss"], rel=1e-4, abs=1e-6)
    assert shared["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-4)
