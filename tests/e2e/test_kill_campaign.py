"""kill -9 at chosen moments, then ``resume=true``, until the run ends: the short version of
``benchmarks/kill_campaign.py`` (whose functions it runs), two kills per run type on shortened runs, together in
the cold start, the rollouts, the optimisation and a checkpoint's writing. The full campaign (10 kills per run type,
every phase in both) and its result are in benchmarks/RESULTS.md. Also, on files as a kill leaves them: what a
resumed run forgets (``RunDir.rewind``) and the leftovers of killed saves and prunings."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from mmrl import checkpoint
from mmrl.errors import DataError
from mmrl.store import RunDir, atomic_write_text

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_campaign.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kill_campaign", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kill_campaign = load_benchmark()

SHORT = {"vlm": ("data.synthetic.n_train=16", "sft.steps=4", "grpo.steps=3"), "diffusion": ("optim.steps=3",)}
"""Shorter runs than the benchmark's."""
KILLS = {"vlm": ["cold start", "optimisation"], "diffusion": ["rollouts", "checkpoint write"]}
"""The phases the kills aim at, in turn."""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vlm", "diffusion"])
def test_runs_killed_in_each_phase_and_resumed_end_as_the_uninterrupted_run(name, tiny_cache, tmp_path):
    """Every step's metrics (wall-clock time aside), each step once and in order; the same rollouts, checkpoints,
    trained weights and evaluations, and no file the uninterrupted run lacks."""
    outcome = kill_campaign.campaign(kill_campaign.RUN_TYPES[name], tmp_path, tiny_cache, kills=2,
                                     overrides=SHORT[name], order=list(KILLS[name]), echo=print)
    assert [k.landed for k in outcome.kills] == KILLS[name]
    assert outcome.problems == []
    run_type = kill_campaign.RUN_TYPES[name]
    compared = {*run_type.logs, *(f"{tree}/" for tree in run_type.trees), *run_type.records}
    assert compared < set(outcome.checks)  # and the run directory's listing
    assert set(outcome.checks.values()) == {"equal"}, outcome.checks


def killed_run_dir(root: Path) -> RunDir:
    """A run directory as a run killed during step 4 leaves it: metrics and rollouts of steps 1-3, step 4's metric
    line half written, the temporaries of writes killed before their rename."""
    run = RunDir(root)
    for step in (1, 2, 3):
        run.log_sft(step, {"sft/loss": 1.0 / step})
        run.log_metrics(step, {"reward/mean": step / 10})
        atomic_write_text(root / "rollouts" / f"step_{step:06d}.jsonl", "{}\n")
        (root / "rollouts" / f"step_{step:06d}").mkdir()
        (root / "rollouts" / f"step_{step:06d}" / "0000.png").write_bytes(b"png")
    with open(root / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')
    (root / "media").mkdir()
    (root / "media" / "0123abcd-screen.png").write_bytes(b"png")
    for temporary in ("rollouts/.step_000004.jsonl.tmp4242", "media/.0123abcd-other.png.tmp4242",
                      ".summary.json.tmp4242"):
        (root / temporary).write_text("half")
    return run


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_rewind_forgets_what_a_killed_run_wrote_after_its_checkpoint(tmp_path):
    run = killed_run_dir(tmp_path)
    run.rewind(2)
    assert (tmp_path / "metrics.jsonl").read_text() == ('{"step": 1, "reward/mean": 0.1}\n'
                                                        '{"step": 2, "reward/mean": 0.2}\n')
    assert len((tmp_path / "sft_metrics.jsonl").read_text().splitlines()) == 3  # the cold start is not run again
    assert listing(tmp_path) == ["media", "media/0123abcd-screen.png", "metrics.jsonl", "rollouts",
                                 "rollouts/step_000001", "rollouts/step_000001.jsonl", "rollouts/step_000001/0000.png",
                                 "rollouts/step_000002", "rollouts/step_000002.jsonl", "rollouts/step_000002/0000.png",
                                 "sft_metrics.jsonl"]
    run.log_metrics(3, {"reward/mean": 0.3})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_rewind_without_a_checkpoint_forgets_the_cold_start_too(tmp_path):
    run = killed_run_dir(tmp_path)
    run.rewind(0, cold_start=True)
    assert (tmp_path / "metrics.jsonl").read_text() == (tmp_path / "sft_metrics.jsonl").read_text() == ""
    assert listing(tmp_path / "rollouts") == []


def test_rewind_refuses_a_log_damaged_otherwise_than_by_a_kill(tmp_path):
    run = killed_run_dir(tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().split("\n")
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]))
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a JSON line"):
        run.rewind(3)


def test_a_save_deletes_what_killed_saves_and_prunings_left(tmp_path):
    """A save killed before its rename leaves a ``.tmp-step-N``, and so does a pruning killed mid-delete (it renames
    the folder before deleting it, so no half-deleted ``step-N`` stays). The next save deletes both."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    layer = torch.nn.Linear(2, 2)
    accelerator.prepare(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    checkpoint.register(accelerator)
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, accelerator, keep=2)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002", "step-000003"]
    for leftover in (".tmp-step-000001", ".tmp-step-000004"):
        shutil.copytree(folder / "step-000002", folder / leftover)
        (folder / leftover / "manifest.json").unlink()
    checkpoint.save(tmp_path, 4, {"step": 4}, accelerator, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000003", "step-000004"]
