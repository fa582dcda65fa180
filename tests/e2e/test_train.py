"""End-to-end GRPO runs on the tiny Qwen2.5-VL (CPU, seconds each)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.config import TrainConfig, load_config
from mmrl.trainer import train

REQUIRED_METRICS = {"step", "reward/mean", "reward/std", "loss", "kl", "completion_len/mean"}


def run(overrides: list[str], on_step=None, trackers=()) -> dict:
    return train(load_config(TrainConfig, None, overrides), on_step=on_step, trackers=trackers)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def test_run_directory_contents(tiny_run, tmp_path, recording_tracker):
    """The default trackers (TensorBoard) and a tracker object get exactly the rows of ``metrics.jsonl``."""
    summary = run(tiny_run + ["grpo.beta=0.04", "grpo.mu=2"], trackers=[recording_tracker])
    root = tmp_path / "run"
    metrics = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(REQUIRED_METRICS <= set(m) for m in metrics)
    assert all(m["kl"] >= 0 for m in metrics)
    groups = [json.loads(line) for line in (root / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    assert len(groups) == 2
    for g in groups:
        assert len(g["completions"]) == len(g["advantages"]) == len(g["truncated"]) == 4
        assert set(g["rewards"]) == {"point", "format"}
        assert Path(g["images"][0]).is_file()
        assert g["fields"]["gt_box"] and g["fields"]["scale"]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert (root / "sft_model" / "config.json").is_file() and (root / "final" / "config.json").is_file()
    assert list((root / "tb" / "run").glob("events.out.tfevents.*"))
    assert recording_tracker.rows == metrics and recording_tracker.finished
    assert recording_tracker.config["grpo.beta"] == 0.04 and recording_tracker.config["output_dir"] == str(root)
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk["before"]["n"] == 4 and 0 <= on_disk["after"]["accuracy"] <= 1
    assert summary["after"] == on_disk["after"]
    sft = [json.loads(line) for line in (root / "sft_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in sft] == [1, 2]


class Stop(Exception):
    pass


STATEFUL = ["grpo.prompt_sampler=vas", "grpo.dynamic_sampling=refill", "grpo.advantage=bnpo",
            "grpo.advantage_args={momentum: 0.5}"]


def straight_then_crashed(tiny_run, tmp_path, common: list[str]) -> list[str]:
    """Run ``common`` to its end in ``tmp_path/a``, and in ``tmp_path/b`` until step 3 is done (then an exception,
    as if killed); returns the crashed run's overrides, to resume it."""
    straight = [o for o in tiny_run if not o.startswith("output_dir")] + [f"output_dir={tmp_path / 'a'}"]
    crashed = [o for o in tiny_run if not o.startswith("output_dir")] + [f"output_dir={tmp_path / 'b'}"]
    run(straight + common)

    def crash(step):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        run(crashed + common, on_step=crash)
    assert not (tmp_path / "b" / "final").exists()
    return crashed + common


def assert_same_trained_weights(tmp_path) -> None:
    """Runs ``a`` and ``b`` ended with bit-identical weights, which RL changed (else the check would be vacuous)."""
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    base = load_file(tmp_path / "a" / "sft_model" / "model.safetensors")
    assert any(not torch.equal(base[n], a[n]) for n in a), "RL changed nothing: the comparison would be vacuous"


@pytest.mark.parametrize("extra", [[], STATEFUL], ids=["grpo", "stateful-sampler-and-advantage"])
def test_resume_after_a_crash_gives_identical_weights(tiny_run, tmp_path, extra):
    """N = 4 steps straight vs. killed after step 3 (last checkpoint: step 2) and resumed: bit-identical. The
    second case also restores the Variance-Aware Sampling scores, the refill data position and BNPO's state."""
    crashed = straight_then_crashed(tiny_run, tmp_path, ["grpo.steps=4", "save_every=2", "grpo.mu=2",
                                                         "grpo.beta=0.04", "grpo.lr=1e-3", *extra])
    run(crashed + ["resume=true"])
    assert_same_trained_weights(tmp_path)
    steps_a = [json.loads(x)["step"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps_b = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps_a == steps_b == [1, 2, 3, 4]


def test_resume_past_a_damaged_latest_checkpoint_gives_identical_weights(tiny_run, tmp_path, capsys):
    """3 steps straight vs. killed after step 3 (checkpoints of steps 2 and 3), one byte of step 3's weights flipped,
    and resumed: the run says in one line that it skips step 3, goes on from step 2 and ends bit-identical."""
    # tiny_run saves every step and keeps 2
    crashed = straight_then_crashed(tiny_run, tmp_path, ["grpo.steps=3", "grpo.lr=1e-3",
                                                         "eval.before_and_after=false"])
    checkpoints = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002", "step-000003"]
    weights = checkpoints / "step-000003" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    run(crashed + ["resume=true"])

    skipped = [x for x in capsys.readouterr().out.splitlines() if x.startswith("mmrl: skipping checkpoint")]
    assert skipped == ["mmrl: skipping checkpoint step-000003: model.safetensors: checksum mismatch"]
    assert_same_trained_weights(tmp_path)
    assert [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_lora_trains_adapters_with_adapter_disabled_reference(tiny_run, tmp_path):
    summary = run(tiny_run + ["model.lora.enabled=true", "model.lora.r=4", "grpo.beta=0.1", "grpo.lr=1e-2",
                              "model.freeze_vision=true", "model.gradient_checkpointing=true"])
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["kl"] > 0, "after one LoRA update the policy must differ from the adapter-free reference"
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
    assert summary["after"]["n"] == 4


def launch_two(*target: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``target`` (``-m mmrl train ...`` or a script and its arguments) on two CPU ranks (gloo); asserts it
    succeeded (``ok``) or failed. accelerate 1.x runs ``launch --cpu`` as ONE process unless given an MPI hostfile,
    so the two processes are started through its torchrun path (``--multi_gpu``); without CUDA each rank's
    ``Accelerator(cpu=True)`` then joins a MULTI_CPU group."""
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_accelerate_run_keeps_ranks_identical(tiny_run, tmp_path):
    launch_two("-m", "mmrl", "train", "gui_grounding", *tiny_run)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    prints = summary["rank_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.slow
def test_two_process_resume_after_a_kill_gives_identical_weights(tiny_run, tmp_path):
    """Two ranks, 4 RL steps straight vs. both ranks killed after step 3 (last checkpoint: step 2) and resumed: the
    same weights on every rank, bit for bit (model, optimizer, scheduler and each rank's RNG come back through
    ``Accelerator.load_state``)."""
    common = [o for o in tiny_run if not o.startswith(("output_dir", "grpo.steps"))] + [
        "grpo.steps=4", "save_every=2", "grpo.beta=0.04", "grpo.lr=1e-3", "eval.before_and_after=false"]
    straight, crashed = [*common, f"output_dir={tmp_path / 'a'}"], [*common, f"output_dir={tmp_path / 'b'}"]
    launch_two("-m", "mmrl", "train", "gui_grounding", *straight)
    launch_two(str(Path(__file__).with_name("crash_on_ranks.py")), "3", "gui_grounding", *crashed, ok=False)
    assert not (tmp_path / "b" / "final").exists()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-000002"]
    launch_two("-m", "mmrl", "train", "gui_grounding", *crashed, "resume=true")

    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(tmp_path / "a" / "sft_model" / "model.safetensors")
    assert any(not torch.equal(base[k], a[k]) for k in a), "RL changed nothing: the comparison would be vacuous"
    summary_a, summary_b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    assert len(set(summary_a["rank_fingerprints"] + summary_b["rank_fingerprints"])) == 1
    assert [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_evaluation_spread_over_two_ranks_equals_one_process(tiny_run, tmp_path):
    """Each rank decodes every other eval sample (5 samples: shares of 3 and 2); gathered back in order, the
    outputs equal one process's, one sample per batch so batching cannot change a greedy output."""
    overrides = [o for o in tiny_run if not o.startswith("data.synthetic.n_eval")] + ["data.synthetic.n_eval=5"]
    script = Path(__file__).with_name("generate_on_ranks.py")
    launch_two(str(script), str(tmp_path / "two.json"), *overrides)
    sys.path.insert(0, str(script.parent))
    try:
        from generate_on_ranks import main as one_process
    finally:
        sys.path.remove(str(script.parent))
    one = one_process(str(tmp_path / "one.json"), overrides)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["processes"] == 2  # the ranks really shared the work
    assert len(one) == 5 and len(set(one)) > 1  # distinct outputs: a wrong order would show
    assert two["outputs"] == one


@pytest.mark.slow
def test_eval_with_a_model_on_two_ranks_prints_its_table_once(tiny_cache, tmp_path):
    """``mmrl eval rec --model`` under two processes: both decode their share and score, the main one prints."""
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 120, 200)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "expression": e, "bbox": [4, 4, 30, 30]} for e in ("red car", "blue car", "sky")]
    (tmp_path / "rec.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = launch_two("-m", "mmrl", "eval", "rec", "--data", str(tmp_path / "rec.jsonl"), "--model",
                      str(tiny_cache / "models" / "tiny-qwen2_5_vl-tiny"), "--min-pixels", "3136", "--max-pixels",
                      "12544", "--max-new-tokens", "4", "--output", str(tmp_path / "r.json"))
    assert proc.stdout.count("acc@0.5") == 1, proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 3


def test_interleave_puts_each_ranks_outputs_back_in_sample_order():
    from mmrl.evaluate import interleave

    # 5 samples on 2 ranks: rank 0 decoded samples 0, 2, 4; rank 1 samples 1, 3.
    assert interleave([["s0", "s2", "s4"], ["s1", "s3"]], 5) == ["s0", "s1", "s2", "s3", "s4"]
