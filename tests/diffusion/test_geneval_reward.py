"""The ``geneval`` and ``geneval_partial`` image rewards on hand-made mini-GenEval images: 1 / 0 per image, the
exact partial fractions, garbage images (0, never an error), metadata from a file or parsed from the prompt, and
their registration and arguments."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrl.diffusion.image_rewards import WeightedImageReward, make_image_reward
from mmrl.errors import ConfigError, DataError
from mmrl.plugins import IMAGE_REWARDS
from rewards.image import RewardArgumentError
from tasks import mini_geneval as mg


def row(text):
    parsed = mg.parse_prompt(text)
    assert parsed is not None, text
    return parsed


def draw(text_or_row, seed=0, resolution=32):
    """``[3, R, R]`` in [0, 1]: a rendering of a prompt of the world's wording (or of a metadata row)."""
    metadata = row(text_or_row) if isinstance(text_or_row, str) else text_or_row
    image = mg.render(metadata, random.Random(seed), resolution)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def score(name, prompts, images, **args):
    return make_image_reward(name, **args)(torch.stack(images), prompts).tolist()


def only(*clauses, tag="two_object"):
    return {"tag": tag, "prompt": "x", "include": list(clauses)}


CIRCLE_LEFT_OF_SQUARE = "a photo of a circle left of a square"
RED_CIRCLE_BLUE_SQUARE = "a photo of a red circle and a blue square"


@pytest.mark.parametrize("resolution", [32, 64])
def test_correct_images_score_1_and_wrong_ones_0(resolution):
    prompts = [r["prompt"] for r in mg.prompts(12, seed=0)]
    good = [draw(p, i, resolution) for i, p in enumerate(prompts)]
    bad = [draw(mg.corrupt(row(p), random.Random(i)), i, resolution) for i, p in enumerate(prompts)]
    for name in ("geneval", "geneval_partial"):
        assert score(name, prompts, good) == [1.0] * 12
    assert score("geneval", prompts, bad) == [0.0] * 12
    assert all(0 <= s < 1 for s in score("geneval_partial", prompts, bad))


def test_partial_credit_fractions():
    two_squares = "a photo of two squares"
    cases = [
        (two_squares, row("a photo of three squares"), 0.0, 0.5),  # include holds, exclude fails
        (two_squares, row("a photo of a square"), 0.0, 0.0),  # include fails: the exclude earns nothing
        (two_squares, row(two_squares), 1.0, 1.0),
        (RED_CIRCLE_BLUE_SQUARE, row("a photo of a red circle and a green square"), 0.0, 0.5),
        (RED_CIRCLE_BLUE_SQUARE, row("a photo of a yellow circle and a green square"), 0.0, 0.0),
        (CIRCLE_LEFT_OF_SQUARE, row("a photo of a circle right of a square"), 0.0, 0.5),  # the square holds
        (CIRCLE_LEFT_OF_SQUARE, row("a photo of a circle"), 0.0, 0.0),  # no square: no target for the circle
        (CIRCLE_LEFT_OF_SQUARE, row("a photo of a square"), 0.0, 0.5),
        ("a photo of a circle and a triangle", row("a photo of a circle"), 0.0, 0.5),
        ("a photo of a circle and a triangle", row("a photo of a square"), 0.0, 0.0),
        ("a photo of a purple triangle", row("a photo of a red triangle"), 0.0, 0.0),
        ("a photo of a triangle", row("a photo of a triangle and a circle"), 1.0, 1.0),  # extra objects are fine
    ]
    prompts = [p for p, *_ in cases]
    images = [draw(r, seed=i) for i, (_, r, *_) in enumerate(cases)]
    assert score("geneval", prompts, images) == [c[2] for c in cases]
    assert score("geneval_partial", prompts, images) == [c[3] for c in cases]


def test_garbage_images_score_0_and_never_raise():
    prompts = [r["prompt"] for r in mg.prompts(6, seed=1)]
    blank = torch.full((6, 3, 32, 32), 200 / 255)
    noise = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    wild = torch.tensor([float("nan"), float("inf"), -float("inf"), 5.0, -3.0, 0.5]).view(6, 1, 1, 1).expand(6, 3, 32, 32)
    for name in ("geneval", "geneval_partial"):
        reward = make_image_reward(name)
        assert reward(blank, prompts).tolist() == [0.0] * 6
        assert reward(noise, prompts).tolist() == [0.0] * 6
        out = reward(wild.to(torch.float16), prompts)
        assert out.dtype == torch.float32 and out.shape == (6,) and out.tolist() == [0.0] * 6


def test_metadata_from_a_file_overrides_parsing(tmp_path):
    custom = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "green"}],
              "prompt": "draw me something nice"}
    official = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(custom) + "\n" + json.dumps(official) + "\n")
    image = draw(custom)
    reward = make_image_reward("geneval", metadata_file=str(path))
    assert reward(torch.stack([image, image, image]), [custom["prompt"], "a photo of a bench",
                                                       "a photo of a green square"]).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(RewardArgumentError, match="no GenEval metadata for the prompt 'a photo of a bench'"):
        make_image_reward("geneval")(image[None], ["a photo of a bench"])
    with pytest.raises(ConfigError, match="image reward 'geneval'.*no GenEval metadata"):
        WeightedImageReward([("geneval", 1.0)])(image[None], ["a photo of a bench"])
    path.write_text(json.dumps(custom) + "\n" + json.dumps({**custom, "tag": "single_object"}) + "\n")
    with pytest.raises(DataError, match="two different metadata rows"):
        make_image_reward("geneval", metadata_file=str(path))
    path.write_text(json.dumps({**custom, "include": [{"class": "square"}]}) + "\n")
    with pytest.raises(DataError, match="missing field 'count'"):
        make_image_reward("geneval", metadata_file=str(path))


def test_registration_arguments_and_weighted_sum():
    assert IMAGE_REWARDS.capability("geneval", "differentiable") is False
    assert IMAGE_REWARDS.capability("geneval_partial", "differentiable") is False
    with pytest.raises(ConfigError, match="unknown GenEval detector 'nope'.*shapes"):
        make_image_reward("geneval", detector="nope")
    with pytest.raises(ConfigError, match="detector_args.bad"):
        make_image_reward("geneval", detector_args={"bad": 1})
    image = draw("a photo of a blue circle")[None]
    assert make_image_reward("geneval", detector_args={"min_chroma": 250})(image, ["a photo of a blue circle"]).item() == 0
    reward = make_image_reward("geneval_partial")
    assert not reward.loaded and reward.differentiable is False
    total, parts = WeightedImageReward([("geneval", 1.0), ("geneval_partial", 0.5)])(
        torch.cat([image, torch.zeros_like(image)]), ["a photo of a blue circle"] * 2)
    assert total.tolist() == [1.5, 0.0] and set(parts) == {"geneval", "geneval_partial"}
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward(torch.cat([image, image]), ["a photo of a blue circle"])


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["awm", "flow_grpo"])
def test_shipped_mini_geneval_configs_run_end_to_end_shortened(tmp_path, monkeypatch, algorithm):
    """The shipped ``configs/diffusion/ALGORITHM/mini_geneval.yaml`` as a user runs it from the checkout (its
    prompts.file is relative), shortened: a pipeline pre-trained 3 + 3 steps on the world (not the shipped 1000 +
    2000), two RL steps with the ``geneval_partial`` reward, then FK steering from the same config. The full-length
    runs are benchmarks (benchmarks/mini_geneval.py, RESULTS.md)."""
    from mmrl.cli import main
    from mmrl.config import load_config
    from mmrl.diffusion.config import DiffusionConfig
    from mmrl.diffusion.trainer import train

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    config = root / "configs" / "diffusion" / algorithm / "mini_geneval.yaml"
    small = [f"model.cache_dir={tmp_path / 'cache'}", "model.tiny_vae_steps=3", "model.tiny_pretrain_steps=3",
             "progress=false"]
    cfg = load_config(DiffusionConfig, config, [*small, f"output_dir={tmp_path / 'run'}", "optim.steps=2",
                                                "optim.prompts_per_step=2", "optim.images_per_prompt=2",
                                                "optim.micro_batch_size=4", "sampling.steps=3",
                                                "sampling.sde_window=[0, 2]"])
    assert cfg.model.tiny_world == "mini_geneval" and cfg.rewards[0].name == "geneval_partial"
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["reward/mean"] <= 1 for r in rows)
    assert summary["reward"]["window"] == 5
    assert (tmp_path / "cache" / "models" / "tiny-sd-r32-p3-v3-mini_geneval" / "model_index.json").is_file()

    prompts = tmp_path / "prompts.jsonl"
    mg.write_jsonl(mg.prompts(2, seed=1), prompts)
    overrides = tmp_path / "steer.yaml"  # the shipped config with the shortened pipeline's settings
    overrides.write_text(config.read_text().replace("tiny_vae_steps: 1000", "tiny_vae_steps: 3")
                         .replace("tiny_pretrain_steps: 2000", "tiny_pretrain_steps: 3")
                         .replace("path: tiny-sd\n", f"path: tiny-sd\n  cache_dir: {tmp_path / 'cache'}\n"))
    main(["diffusion", "steer", "--config", str(overrides), "--prompts", str(prompts), "--steps", "4",
          "--resample-every", "2", "--baseline", "best_of_n", "--out", str(tmp_path / "fk"), "--quiet"])
    steered = json.loads((tmp_path / "fk" / "summary.json").read_text())
    assert steered["fk"]["denoiser_calls"] == steered["best_of_n"]["denoiser_calls"]
    assert 0 <= steered["fk"]["mean_reward"] <= 1
