"""Shared fixtures: one tiny Qwen2.5-VL checkpoint per test session, overrides for tiny training runs, an offline
experiment tracker, and a tiny random open_clip CLIP."""
from __future__ import annotations

import json

import pytest
import torch
from accelerate.tracking import GeneralTracker

from mmrl.config import TrainConfig, load_config
from mmrl.models.tiny import make_tiny
from mmrl.trainer import train


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache folder holding the tiny model that ``model.path=tiny`` resolves to (built once)."""
    cache = tmp_path_factory.mktemp("mmrl-cache")
    make_tiny(cache / "models" / "tiny-qwen2_5_vl-tiny", family="qwen2_5_vl", size="tiny")
    return cache


@pytest.fixture
def tiny_run(tiny_cache, cold_model, tmp_path):
    """``key=value`` overrides for a seconds-long GUI grounding run in ``tmp_path / 'run'`` from ``cold_model``."""
    return [
        "task=gui_grounding",
        f"output_dir={tmp_path / 'run'}",
        f"model.cache_dir={tiny_cache}",
        f"model.path={cold_model}",
        "model.min_pixels=12544",
        "model.max_pixels=12544",
        "progress=false",
        "data.synthetic.n_train=16",
        "data.synthetic.n_eval=4",
        "sft.steps=2",
        "sft.batch_size=4",
        "grpo.steps=2",
        "grpo.prompts_per_step=2",
        "grpo.group_size=4",
        "grpo.max_new_tokens=6",
        "grpo.micro_batch_size=4",
        "eval.max_new_tokens=6",
        "save_every=1",
    ]


@pytest.fixture(scope="session")
def cold_model(tiny_cache, tmp_path_factory):
    """A tiny model cold-started until it writes ``(x, y)`` answers, so RL rewards vary within groups."""
    out = tmp_path_factory.mktemp("cold")
    overrides = ["task=gui_grounding", f"output_dir={out}", f"model.cache_dir={tiny_cache}", "model.min_pixels=12544",
                 "model.max_pixels=12544", "progress=false", "data.synthetic.n_train=64", "data.synthetic.n_eval=4",
                 "sft.steps=40", "sft.batch_size=8", "sft.lr=3e-3", "grpo.steps=0", "log_rollouts=false"]
    summary = train(load_config(TrainConfig, None, overrides))
    assert summary["after"]["parsed"] > 0, "the cold start must teach the answer format"
    return out / "final"


class RecordingTracker(GeneralTracker):
    """An offline experiment tracker: keeps the run's hyperparameters, its ``log`` calls as ``{"step", **values}``
    rows (the shape of a ``metrics.jsonl`` line) and whether the run ended."""

    name = "recording"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.config: dict | None = None
        self.rows: list[dict] = []
        self.finished = False

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = values

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.rows.append({"step": step, **values})

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def hf_sampling(monkeypatch):
    """Make the shared-prefix path sample through HF ``generate`` on the repeated prompts, as the full-sequence path
    does: from one seed both then draw the same tokens (``shared_generate`` draws by inverse CDF, other tokens), so a
    test comparing the two paths' first step compares only their log-prob passes."""
    from mmrl.rollout import groups
    from mmrl.rollout.hf import generate
    from mmrl.rollout.shared import expand_batch

    def repeated_generate(model, processor, batch, group_size, **kwargs):
        return generate(model, processor, expand_batch(batch, group_size), do_sample=True, **kwargs)

    monkeypatch.setattr(groups, "shared_generate", repeated_generate)


@pytest.fixture
def recording_tracker():
    """A fresh ``RecordingTracker``, for ``train(cfg, trackers=[...])``."""
    return RecordingTracker()


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv) -> str``: run ``mmrl argv``, expect exit status 2 and one line on stderr, and return it."""
    from mmrl.cli import main

    def run(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    return run


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """``(config_file, weights_file, model)``: a tiny random open_clip CLIP saved as a config and a state dict."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip")
    config_file = folder / "mmrl-test-tiny-clip.json"
    config_file.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    model = open_clip.create_model("mmrl-test-tiny-clip").eval()
    weights = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return str(config_file), str(weights), model
