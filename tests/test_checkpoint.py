"""``mmrl.checkpoint`` on a two-layer model whose first layer is frozen (as the base under LoRA), in one process."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from mmrl import checkpoint
from mmrl.errors import ConfigError, DataError


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


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    """Invert the middle byte of ``path``: a corruption that keeps the size, so only the checksum can find it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_only_complete_checkpoints_count_and_the_last_keep_stay(tmp_path, capsys):
    accelerator, *_ = setup()
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, accelerator, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step-000004").mkdir()  # a save killed before its rename
    old_format = shutil.copytree(checkpoint.step_dir(tmp_path, 3), checkpoint.step_dir(tmp_path, 5))
    (old_format / "manifest.json").unlink()  # as written before checkpoints had manifests
    assert names(checkpoint.checkpoints(tmp_path)) == ["step-000002", "step-000003"]
    assert checkpoint.resume_point(tmp_path, accelerator) == checkpoint.step_dir(tmp_path, 3)
    assert capsys.readouterr().out == "mmrl: skipping checkpoint step-000005: manifest.json: missing\n"


def test_the_manifest_lists_every_file_with_its_size_and_checksum(tmp_path):
    path = checkpoint.save(tmp_path, 3, {"step": 3}, setup()[0])
    listed = json.loads((path / "manifest.json").read_text())
    assert listed["step"] == 3
    assert set(listed["files"]) == {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl",
                                    "random_states_0.pkl", "trainer_state.pt"}
    for name, entry in listed["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert checkpoint.verify(path) is None
    assert checkpoint.verify(path.rename(checkpoint.step_dir(tmp_path, 4))) == \
        "step-000004: manifest.json: written for step-000003"  # a folder copied or renamed to another step


def test_files_in_sub_folders_are_listed_and_checked(tmp_path):
    """FSDP and DeepSpeed write sub-folders of shards."""
    folder = tmp_path / "step-000007"
    shard = folder / "pytorch_model_fsdp_0" / "__0_0.distcp"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"shard")
    (folder / "manifest.json").write_text(json.dumps(checkpoint.manifest(folder, 7)))
    assert checkpoint.verify(folder) is None
    shard.write_bytes(b"shaRd")
    assert checkpoint.verify(folder) == "step-000007: pytorch_model_fsdp_0/__0_0.distcp: checksum mismatch"


def test_checksums_of_files_longer_than_a_chunk_cover_every_chunk(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * (3 * 4096 + 1)  # 3 MiB and 256 bytes: four chunks, the last one short
    path.write_bytes(data)
    assert checkpoint.file_sha256(path) == hashlib.sha256(data).hexdigest()


DAMAGES = {
    "truncated": (lambda p: truncate(p / "model.safetensors"),
                  r"step-000001: model\.safetensors: truncated: \d+ of \d+ bytes"),
    "byte-flipped": (lambda p: flip_byte(p / "optimizer.bin"), r"step-000001: optimizer\.bin: checksum mismatch"),
    "deleted": (lambda p: (p / "random_states_0.pkl").unlink(), r"step-000001: random_states_0\.pkl: missing"),
    "added": (lambda p: (p / "random_states_1.pkl").write_bytes(b"x"),
              r"step-000001: random_states_1\.pkl: not in the manifest"),
    "manifest-deleted": (lambda p: (p / "manifest.json").unlink(), r"step-000001: manifest\.json: missing"),
    "manifest-truncated": (lambda p: truncate(p / "manifest.json"),
                           r"step-000001: manifest\.json: unreadable \(JSONDecodeError: .*\)"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_verify_names_the_damaged_file_in_one_line(tmp_path, damage):
    path = checkpoint.save(tmp_path, 1, {"step": 1}, setup()[0])
    harm, reason = DAMAGES[damage]
    harm(path)
    assert re.fullmatch(reason, checkpoint.verify(path) or "intact")


def test_resume_skips_a_truncated_latest_checkpoint_in_one_line_and_repeats_the_run(tmp_path, capsys):
    accelerator, *objects = setup()
    train_step(*objects)
    checkpoint.save(tmp_path, 1, {"step": 1}, accelerator)
    expected = train_step(*objects)
    truncate(checkpoint.save(tmp_path, 2, {"step": 2}, accelerator) / "model.safetensors")

    accelerator, *objects = setup()
    path = checkpoint.resume_point(tmp_path, accelerator)
    assert path == checkpoint.step_dir(tmp_path, 1)
    assert re.fullmatch(r"mmrl: skipping checkpoint step-000002: model\.safetensors: truncated: \d+ of \d+ bytes\n",
                        capsys.readouterr().out)
    assert checkpoint.load(path, accelerator) == {"step": 1}
    resumed = train_step(*objects)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


def test_resume_verifies_from_the_newest_back_to_the_first_good_one_only(tmp_path, monkeypatch):
    accelerator = setup()[0]
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, accelerator, keep=3)
    flip_byte(checkpoint.step_dir(tmp_path, 3) / "trainer_state.pt")
    verified = []
    verify = checkpoint.verify
    monkeypatch.setattr(checkpoint, "verify", lambda path: verified.append(path.name) or verify(path))
    assert checkpoint.resume_point(tmp_path, accelerator) == checkpoint.step_dir(tmp_path, 2)
    assert verified == ["step-000003", "step-000002"]  # step 1 is not read


def test_resume_refuses_when_no_checkpoint_is_intact_and_starts_afresh_when_there_is_none(tmp_path):
    accelerator = setup()[0]
    for step in (1, 2):
        checkpoint.save(tmp_path, step, {"step": step}, accelerator)
    flip_byte(checkpoint.step_dir(tmp_path, 1) / "model.safetensors")
    (checkpoint.step_dir(tmp_path, 2) / "optimizer.bin").unlink()
    with pytest.raises(DataError, match=r"no checkpoint under .*checkpoints is intact \(step-000002: optimizer\.bin: "
                                        r"missing; step-000001: model\.safetensors: checksum mismatch\)"):
        checkpoint.resume_point(tmp_path, accelerator)
    assert checkpoint.resume_point(tmp_path / "fresh", accelerator) is None


def test_pruning_keeps_the_new_checkpoint_when_a_later_damaged_one_was_skipped(tmp_path):
    """Resumed from step 1 past a damaged step 3, the run saves step 2 with keep=1: step 2 stays (step 3 waits to be
    replaced when the run reaches it)."""
    accelerator = setup()[0]
    for step in (1, 3):
        checkpoint.save(tmp_path, step, {"step": step}, accelerator)
    flip_byte(checkpoint.step_dir(tmp_path, 3) / "trainer_state.pt")
    assert checkpoint.resume_point(tmp_path, accelerator) == checkpoint.step_dir(tmp_path, 1)
    checkpoint.save(tmp_path, 2, {"step": 2}, accelerator, keep=1)
    assert names(checkpoint.checkpoints(tmp_path)) == ["step-000002", "step-000003"]


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


def test_resuming_on_fewer_processes_than_wrote_it_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, 1, {"step": 1}, setup()[0])
    shutil.copyfile(path / "random_states_0.pkl", path / "random_states_1.pkl")  # as if a rank 1 had written it
    with pytest.raises(ConfigError, match="checkpoint .* was written by more processes than the 1 resuming it"):
        checkpoint.load(path, setup()[0])
