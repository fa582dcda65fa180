"""Numerical faults (``mmrl.nonfinite``): an update with a NaN or infinite loss or gradient is skipped, counted in
``skipped_steps`` and never reaches the weights or the optimizer's moments; ``max_consecutive_skips`` such steps in a
row stop the run with ``NonFiniteError``, the last checkpoint (from before the faults) intact and resumable.

Faults are injected deterministically: a NaN term in a loss, or a NaN gradient element (unit tests); a hook that
turns the output layer's gradient into NaN during chosen RL steps (VLM trainer); a NaN reward for one image during
chosen steps (diffusion trainer). Each test also sees the weights move on the steps without a fault, so a guard that
skipped everything would fail too.
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from collections.abc import Callable

import pytest
import torch

from mmrl import nonfinite, trainer
from mmrl.config import TrainConfig, load_config
from mmrl.diffusion import trainer as diffusion_trainer
from mmrl.diffusion.algorithms.base import Context
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.image_rewards import WeightedImageReward
from mmrl.errors import NonFiniteError
from mmrl.nonfinite import SkipGuard

NAN = float("nan")


def same(a, b) -> bool:
    """Bit-for-bit equality of nested dicts/lists/tuples of tensors and numbers."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def snapshot(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """Copies of the trainable weights and of the optimizer's per-parameter state (AdamW's step and moments)."""
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return weights, copy.deepcopy(optimizer.state_dict()["state"])


def metrics(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]


def checkpoint_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "checkpoints").iterdir() if p.name.startswith("step-"))


# --- the guard -------------------------------------------------------------------------------------------------------


def test_guard_counts_skipped_steps_warns_once_each_and_stops_at_the_limit(capsys):
    guard = SkipGuard(limit=2, section="grpo")
    assert guard.allow([1.0, torch.tensor(2.0)], None) and not guard.end_step(1)
    assert not guard.allow([NAN], None)
    assert guard.allow([1.0], None)  # a later update of the same step (mu > 1) is judged on its own
    assert guard.end_step(2) and (guard.skipped, guard.consecutive) == (1, 1)
    guard.stop_if_stuck(2)
    assert guard.allow([0.5], None) and not guard.end_step(3)
    assert guard.consecutive == 0  # a clean step ends the run of faults
    for step, bad in ((4, torch.tensor(math.inf)), (5, -math.inf)):
        assert not guard.allow([1.0, bad], None) and guard.end_step(step)
    assert guard.skipped == 3
    with pytest.raises(NonFiniteError, match=r"steps 4-5: 2 steps in a row.*grpo\.max_consecutive_skips=2.*"
                                             r"after step 3: resume=true"):
        guard.stop_if_stuck(5)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1] for line in lines] == [" step 2", " step 4", " step 5"]
    assert lines[0].startswith("mmrl: step 2: non-finite loss or gradient, 1 update(s) skipped")


def test_guard_with_limit_0_never_stops_and_other_ranks_stay_silent(capsys):
    guard = SkipGuard(limit=0, main=False)
    for step in range(1, 11):
        assert not guard.allow([NAN], None) and guard.end_step(step)
        guard.stop_if_stuck(step)
    assert guard.skipped == guard.consecutive == 10
    assert capsys.readouterr().out == ""


TWO_RANKS = """
from accelerate import Accelerator
from mmrl.nonfinite import SkipGuard

accelerator = Accelerator(cpu=True)
guard = SkipGuard(main=False)
nan_on_rank_1 = [float("nan") if accelerator.process_index == 1 else 1.0]
print(f"rank {accelerator.process_index}: {[guard.allow(nan_on_rank_1, accelerator), guard.allow([1.0], accelerator)]}")
accelerator.end_training()  # leave the process group before exiting (gloo aborts now and then otherwise)
"""


@pytest.mark.slow
def test_every_rank_skips_when_one_ranks_loss_is_nan(tmp_path):
    """Two CPU ranks: rank 1 alone has a NaN loss; both skip that update and both apply the next."""
    from e2e.test_train import launch_two

    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    proc = launch_two(str(script))
    decisions = sorted(re.findall(r"rank \d: \[\w+, \w+\]", proc.stdout))  # the ranks' lines may interleave
    assert decisions == ["rank 0: [False, True]", "rank 1: [False, True]"], proc.stdout


# --- one optimizer step (the diffusion Context's; the VLM trainer's makes the same calls) ---------------------------


def tiny_context() -> Context:
    """A Context around a 3 -> 2 linear "denoiser" with AdamW, after one clean update (so the moments exist)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ctx = Context(DiffusionConfig(), SimpleNamespace(denoiser=net), None, torch.optim.AdamW(net.parameters(), lr=0.1),
                  None, SkipGuard(main=False))
    ctx.backward(net(torch.randn(4, 3)).square().mean(), 1.0)
    ctx.optimizer_step()
    ctx.guard.end_step(1)
    return ctx


def faulty_update(ctx: Context, fault: str) -> None:
    """Accumulate one micro-batch with ``fault`` and call ``optimizer_step``."""
    net = ctx.policy.denoiser
    loss = net(torch.ones(2, 3)).square().mean()
    if fault in ("nan_loss", "inf_loss"):  # a constant term: the loss is not finite, its gradient is
        loss = loss + torch.tensor(NAN if fault == "nan_loss" else math.inf)
    ctx.backward(loss, 0.5)
    if fault == "nan_gradient":
        net.weight.grad[0, 1] = NAN
    ctx.optimizer_step()


FAULTS = ["nan_gradient", "nan_loss", "inf_loss"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_non_finite_update_leaves_weights_and_moments_bit_identical(fault):
    ctx = tiny_context()
    before = snapshot(ctx.policy.denoiser, ctx.optimizer)
    faulty_update(ctx, fault)
    assert same(snapshot(ctx.policy.denoiser, ctx.optimizer), before)
    assert all(p.grad is None for p in ctx.params) and ctx.losses == []  # nothing carries into the next update
    assert ctx.guard.end_step(2) and ctx.guard.skipped == 1
    faulty_update(ctx, "none")
    assert not same(snapshot(ctx.policy.denoiser, ctx.optimizer)[0], before[0]), "the next update must apply"
    assert not ctx.guard.end_step(3)


@pytest.mark.parametrize("fault", FAULTS)
def test_without_the_guard_the_same_faults_reach_the_weights(fault, monkeypatch):
    """The control of the test above: with every update allowed, each fault changes the weights (to NaN, or by a
    step whose loss was NaN), so that test's equality is no accident."""
    monkeypatch.setattr(nonfinite, "all_finite", lambda values, accelerator: True)
    ctx = tiny_context()
    before = snapshot(ctx.policy.denoiser, ctx.optimizer)
    faulty_update(ctx, fault)
    assert not same(snapshot(ctx.policy.denoiser, ctx.optimizer)[0], before[0])


# --- the VLM trainer -------------------------------------------------------------------------------------------------


def poison_vlm(monkeypatch, faulty: set[int]) -> list[tuple[tuple, tuple]]:
    """Wrap ``mmrl.trainer.optimise``: during the RL steps in ``faulty`` (1-based, a set the test may change) a hook
    turns the output layer's weight gradient into NaN. Returns the list of ``(before, after)`` snapshots of every
    step's weights and optimizer state that the wrapper fills."""
    calls: list[tuple[tuple, tuple]] = []
    original = trainer.optimise

    def optimise(model, ro, chunks, g, algo, optimizer, *rest):
        step = round(rest[-2] * g.steps) + 1  # ``progress`` is step / steps, 0-based
        before = snapshot(model, optimizer)
        weight = model.get_output_embeddings().weight
        hook = weight.register_hook(lambda grad: torch.full_like(grad, NAN)) if step in faulty else None
        try:
            return original(model, ro, chunks, g, algo, optimizer, *rest)
        finally:
            if hook is not None:
                hook.remove()
            calls.append((before, snapshot(model, optimizer)))

    monkeypatch.setattr(trainer, "optimise", optimise)
    return calls


def train_vlm(overrides: list[str]) -> dict:
    return trainer.train(load_config(TrainConfig, None, overrides))


VLM = ["grpo.lr=1e-3", "eval.before_and_after=false", "log_rollouts=false"]


def test_vlm_skips_a_faulty_step_and_trains_on(tiny_run, tmp_path, monkeypatch, capsys):
    """Step 2 of 3 has a NaN gradient in both of its mu = 2 epochs: its weights and moments stay bit for bit, it
    counts, writes no checkpoint, and steps 1 and 3 train."""
    calls = poison_vlm(monkeypatch, {2})
    train_vlm(tiny_run + VLM + ["grpo.steps=3", "grpo.mu=2"])
    root = tmp_path / "run"
    (before1, after1), (before2, after2), (before3, after3) = calls
    assert same(after2, before2)
    assert not same(after1[0], before1[0]) and not same(after3[0], before3[0])
    rows = metrics(root)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    assert math.isnan(rows[1]["grad_norm"]) and math.isfinite(rows[2]["grad_norm"])
    assert checkpoint_names(root) == ["step-000001", "step-000003"]
    assert (root / "final" / "config.json").is_file()
    assert "mmrl: step 2: non-finite loss or gradient, 2 update(s) skipped" in capsys.readouterr().out


def test_vlm_stops_after_max_consecutive_skips_and_resumes_from_the_last_good_checkpoint(tiny_run, tmp_path,
                                                                                         monkeypatch):
    faulty = {2, 3, 4}
    calls = poison_vlm(monkeypatch, faulty)
    overrides = tiny_run + VLM + ["grpo.steps=4", "grpo.max_consecutive_skips=2"]
    with pytest.raises(NonFiniteError, match=r"steps 2-3: 2 steps in a row.*grpo\.max_consecutive_skips=2"):
        train_vlm(overrides)
    root = tmp_path / "run"
    assert len(calls) == 3 and not (root / "final").exists()
    assert checkpoint_names(root) == ["step-000001"]
    assert [r["skipped_steps"] for r in metrics(root)] == [0, 1, 2]
    good = calls[1][0]  # the state before the faults, which they left alone
    assert same(calls[2][1], good)

    faulty.clear()
    train_vlm(overrides + ["resume=true"])
    assert same(calls[3][0], good), "the resumed run must start from the checkpoint of step 1"
    rows = metrics(root)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["skipped_steps"] for r in rows] == [0] * 4


# --- the diffusion trainer -------------------------------------------------------------------------------------------


def poison_diffusion(monkeypatch, faulty: set[int]) -> tuple[list[tuple[int, tuple, tuple]], Callable[[int], None]]:
    """During the steps in ``faulty`` (1-based, a set the test may change) the step's first image scores NaN; every
    ``Context.optimizer_step`` records ``(step, before, after)`` snapshots. Returns the records and the ``on_step``
    callback that tells the wrappers the step."""
    current, calls = {"step": 1}, []
    score, optimizer_step = WeightedImageReward.__call__, Context.optimizer_step

    def poisoned(self, images, prompts):
        total, parts = score(self, images, prompts)
        if current["step"] in faulty:
            total = torch.cat([total[:1] * NAN, total[1:]])
        return total, parts

    def recorded(self):
        before = snapshot(self.policy.denoiser, self.optimizer)
        norm = optimizer_step(self)
        calls.append((current["step"], before, snapshot(self.policy.denoiser, self.optimizer)))
        return norm

    monkeypatch.setattr(WeightedImageReward, "__call__", poisoned)
    monkeypatch.setattr(Context, "optimizer_step", recorded)
    return calls, lambda done: current.update(step=done + 1)


def diffusion_config(cache: Path, out: Path, *overrides: str) -> DiffusionConfig:
    return load_config(DiffusionConfig, None, [
        "algorithm=flow_grpo", "model.path=tiny-sd3", f"model.cache_dir={cache}", f"output_dir={out}",
        "rewards=[{name: brightness}]", "model.max_sequence_length=8", "optim.prompts_per_step=2",
        "optim.images_per_prompt=2", "optim.micro_batch_size=4", "sampling.steps=3", "progress=false",
        "log_with=[]", "log_rollouts=false", "save_every=1", *overrides])


def step_states(calls, step: int) -> tuple[tuple, tuple]:
    """The state before the first and after the last optimizer step of training step ``step``."""
    mine = [(before, after) for s, before, after in calls if s == step]
    return mine[0][0], mine[-1][1]


@pytest.fixture(scope="module")
def diffusion_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("diffusion-cache")


def test_diffusion_skips_a_faulty_step_and_trains_on(diffusion_cache, tmp_path, monkeypatch):
    """Flow-GRPO with ppo.mu = 2: a NaN reward in step 2 makes both its updates non-finite; they are skipped."""
    calls, on_step = poison_diffusion(monkeypatch, {2})
    diffusion_trainer.train(diffusion_config(diffusion_cache, tmp_path, "optim.steps=3", "ppo.mu=2"), on_step=on_step)
    assert [s for s, _, _ in calls] == [1, 1, 2, 2, 3, 3]
    before, after = step_states(calls, 2)
    assert same(after, before)
    for step in (1, 3):
        before, after = step_states(calls, step)
        assert not same(after[0], before[0]), f"step {step} must train"
    assert [r["skipped_steps"] for r in metrics(tmp_path)] == [0, 1, 1]
    assert checkpoint_names(tmp_path) == ["step-000001", "step-000003"]


def test_diffusion_stops_after_max_consecutive_skips_and_resumes_from_the_last_good_checkpoint(diffusion_cache,
                                                                                               tmp_path, monkeypatch):
    faulty = {2, 3, 4}
    calls, on_step = poison_diffusion(monkeypatch, faulty)
    cfg = diffusion_config(diffusion_cache, tmp_path, "optim.steps=4", "optim.max_consecutive_skips=2")
    with pytest.raises(NonFiniteError, match=r"steps 2-3: 2 steps in a row.*optim\.max_consecutive_skips=2"):
        diffusion_trainer.train(cfg, on_step=on_step)
    assert checkpoint_names(tmp_path) == ["step-000001"] and not (tmp_path / "final").exists()
    good = step_states(calls, 2)[0]
    assert same(step_states(calls, 3)[1], good)

    faulty.clear()
    calls.clear()
    on_step(1)  # the resumed run starts at step 2
    diffusion_trainer.train(diffusion_config(diffusion_cache, tmp_path, "optim.steps=4", "resume=true"),
                            on_step=on_step)
    assert same(step_states(calls, 2)[0], good), "the resumed run must start from the checkpoint of step 1"
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["skipped_steps"] for r in rows] == [0] * 4
