"""Data-parallel diffusion training: two CPU ranks under ``accelerate launch`` (gloo), as the VLM's two-process test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl import checkpoint
from mmrl.config import load_config
from mmrl.diffusion.artifacts import FINAL_WEIGHTS
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.pipeline import load_policy

TINY = Path(__file__).resolve().parents[2] / "configs" / "diffusion" / "ddpo" / "tiny.yaml"
RUN_FILES = ["checkpoints", "config.json", "final", "metrics.jsonl", "rollouts", "summary.json", "tb"]


@pytest.mark.slow
def test_two_process_run_keeps_ranks_identical_and_only_rank_0_writes(tmp_path):
    """DDPO on the tiny SD 1.x pipeline, 2 steps on two ranks started through accelerate's torchrun path
    (``--multi_gpu``; without CUDA each rank's ``Accelerator(cpu=True)`` joins a MULTI_CPU group). One prompt, so
    the two ranks' groups of a step differ only by their noise. Both ranks write into the same ``output_dir``."""
    run = tmp_path / "run"
    overrides = [f"model.cache_dir={tmp_path / 'cache'}", f"output_dir={run}", "optim.steps=2", "save_every=1",
                 "optim.prompts_per_step=2", "optim.images_per_prompt=2", "optim.micro_batch_size=4",
                 "sampling.steps=3", "prompts.list=[a red apple]", "progress=false"]
    policy = load_policy(load_config(DiffusionConfig, TINY, overrides).model)  # builds the tiny pipeline first
    start = checkpoint.trainable_state(policy.denoiser)
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "mmrl", "diffusion", "train", "ddpo", str(TINY), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Both ranks end with the same weights, rank 0 saved them, and training moved them.
    prints = json.loads((run / "summary.json").read_text())["rank_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    final = load_file(str(run / "final" / FINAL_WEIGHTS))
    assert final.keys() == start.keys()
    assert any(not torch.equal(final[k], start[k]) for k in final), "training changed nothing"
    checkpoint.load_trainable_state(policy.denoiser, final)
    assert checkpoint.fingerprint(policy.denoiser) == prints[0]

    # One writer: one metrics line per step, one TensorBoard file, both ranks' groups and images in rank 0's
    # rollout files, no other files; each checkpoint holds rank 0's state and every rank's RNG.
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert len(list((run / "tb").iterdir())) == 1
    for step in (1, 2):
        groups = [json.loads(x) for x in (run / "rollouts" / f"step_{step:06d}.jsonl").read_text().splitlines()]
        assert [g["prompt"] for g in groups] == ["a red apple"] * 2
        assert groups[0]["total"] != groups[1]["total"], "both ranks sampled the same noise"
        assert len(list((run / "rollouts" / f"step_{step:06d}").iterdir())) == 4
    for step in ("step-000001", "step-000002"):
        assert sorted(p.name for p in (run / "checkpoints" / step).iterdir()) == [
            "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "custom_checkpoint_2.pkl", "manifest.json",
            "random_states_0.pkl", "random_states_1.pkl", "trainer_state.pt"]
