"""``mmrl.checkpoint`` on a two-layer model whose first layer is frozen (as the base under LoRA), in one process."""
from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from mmrl import checkpoint
from mmrl.errors import ConfigError


def setup(frozen: bool = True):
    """A fresh accelerator with the model (always initialised alike, as a run rebuilds its starting model), its
    optimizer and LR schedule registered."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # as the trainers' (one state per process)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(not frozen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoint.register(accelerator, scheduler)
    return accelerator, model, optimizer, scheduler


def train_step(model, optimizer, scheduler) -> dict[str, torch.Tensor]:
    """One update on a random batch (drawn from the global RNG); returns the weights after it."""
    model(torch.randn(3, 4, device=next(model.parameters()).device)).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_repeats_the_next_step_exactly_and_saves_only_trainable_weights(tmp_path):
    accelerator, *objects = setup()
    train_step(*objects)
    path = checkpoint.save(tmp_path, 1, {"step": 1, "sampler": [3, 1]}, accelerator)
    assert load_file(path / "model.safetensors").keys() == {"1.weight", "1.bias"}  # not the frozen layer
    expected = train_step(*objects)

    accelerator, *objects = setup()  # the weights, moments, schedule position and RNG state of step 0
    assert checkpoint.load(path, accelerator) == {"step": 1, "sampler": [3, 1]}
    assert objects[2].last_epoch == 1
    resumed = train_step(*objects)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


def test_only_complete_checkpoints_count_and_the_last_keep_stay(tmp_path):
    accelerator, *_ = setup()
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, accelerator, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step-000004").mkdir()  # a save killed before its rename
    (tmp_path / "checkpoints" / "step-000005").mkdir()  # not written by ``save``
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    assert checkpoint.latest(tmp_path).name == "step-000003"


def test_loading_into_a_different_model_fails(tmp_path):
    path = checkpoint.save(tmp_path, 1, {"step": 1}, setup()[0])
    with pytest.raises(RuntimeError, match=r"does not match the model: missing \['0.bias', '0.weight'\]"):
        checkpoint.load(path, setup(frozen=False)[0])  # layer 0 trainable now: not in the checkpoint


def test_resuming_on_more_processes_than_wrote_it_is_refused(tmp_path):
    accelerator = setup()[0]
    path = checkpoint.save(tmp_path, 1, {"step": 1}, accelerator)
    (path / "random_states_0.pkl").rename(path / "random_states_1.pkl")  # as if only a rank 1 had written it
    with pytest.raises(ConfigError, match="random_states_0.pkl is missing: checkpoint .* was written by fewer"):
        checkpoint.load(path, setup()[0])
