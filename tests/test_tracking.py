"""Experiment trackers (``log_with``): names checked before any work, the config as flat hyperparameters. The runs'
trackers getting exactly ``metrics.jsonl``'s rows are tested in tests/e2e/test_train.py and
tests/diffusion/test_train.py."""
from __future__ import annotations

import pytest
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from mmrl.config import TrainConfig, load_config
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.trainer import train as train_diffusion
from mmrl.errors import ConfigError
from mmrl.tracking import check_trackers, flat_config
from mmrl.trainer import train

MISSING = [name for name in LoggerType.list() if name != "all" and LoggerType(name) not in get_available_trackers()]


def configs(tmp_path, log_with: str) -> list:
    """A VLM and a diffusion config writing into ``tmp_path / 'run'`` with ``log_with``."""
    out = f"output_dir={tmp_path / 'run'}"
    return [load_config(TrainConfig, None, ["task=gui_grounding", out, f"log_with={log_with}"]),
            load_config(DiffusionConfig, None, ["rewards=[{name: brightness}]", out, f"log_with={log_with}"])]


def test_default_and_empty_trackers_are_accepted():
    assert TrainConfig().log_with == DiffusionConfig().log_with == ["tensorboard"]
    check_trackers(["tensorboard"])
    check_trackers([])


@pytest.mark.parametrize("trainer", [train, train_diffusion], ids=["vlm", "diffusion"])
def test_an_unknown_tracker_fails_before_any_work(tmp_path, trainer):
    cfg = configs(tmp_path, "[tensorboard, nosuchtracker]")[trainer is train_diffusion]
    with pytest.raises(ConfigError, match=r"log_with: unknown tracker 'nosuchtracker'; valid: .*wandb"):
        trainer(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not MISSING, reason="every tracker accelerate knows is installed")
@pytest.mark.parametrize("trainer", [train, train_diffusion], ids=["vlm", "diffusion"])
def test_a_tracker_that_is_not_installed_names_its_package(tmp_path, trainer):
    name = MISSING[0]
    cfg = configs(tmp_path, f"[{name}]")[trainer is train_diffusion]
    with pytest.raises(ConfigError, match=rf"log_with: tracker '{name}' is not installed: pip install "):
        trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_comet_ml_names_its_pip_package(monkeypatch):
    monkeypatch.setattr("mmrl.tracking.get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match="pip install comet-ml$"):
        check_trackers(["comet_ml"])


def test_the_config_is_flattened_into_tracker_scalars():
    flat = flat_config({"seed": 0, "task": "t", "resume": False, "timeout": None, "data": {},
                        "grpo": {"lr": 1e-5, "sampler": {"name": "vas"}}, "rewards": [{"name": "x"}]})
    assert flat == {"seed": 0, "task": "t", "resume": False, "timeout": None, "data": "{}", "grpo.lr": 1e-5,
                    "grpo.sampler.name": "vas", "rewards": '[{"name": "x"}]'}
