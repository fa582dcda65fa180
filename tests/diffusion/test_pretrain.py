"""Tests for mmrl.diffusion.pretrain: the synthetic disc data, the VAE latent scale, and that pre-training the
tiny denoiser lowers its own pre-training loss and is what ``model.tiny_pretrain_steps`` builds."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from mmrl.cli import main
from mmrl.colours import COLOURS
from mmrl.config import load_config
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.pipeline import absent_components, resolve_pipeline_path
from mmrl.diffusion.policy import DiffusionPolicy
from mmrl.diffusion.pretrain import disc_images, fit_autoencoder, fit_latent_scale, pretrain_tiny, prompt_colours
from mmrl.diffusion.tiny import make_tiny_diffusion
from mmrl.diffusion.trainer import train
from mmrl.errors import ConfigError
from mmrl.plugins import PRETRAIN_WORLDS

ROOT = Path(__file__).resolve().parents[2]


def test_disc_images_put_the_colour_inside_the_disc_and_a_flat_background_outside():
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    images = disc_images(colours, 32, g)
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    for image, colour in zip(images, colours):
        pixels = image.reshape(3, -1).T  # [R*R, 3]
        inside = (pixels - (colour * 2 - 1)).abs().amax(dim=1) < 1e-6
        # radius >= 0.1 of the side: at least π·(0.1·31)² ≈ 30 pixels; <= 0.3: under π·0.3² of the image
        assert 20 <= int(inside.sum()) <= int(torch.pi * 0.3**2 * 32 * 32) + 40
        outside = pixels[~inside]
        assert torch.allclose(outside, outside[0].expand_as(outside))  # one flat background colour


def test_prompt_colours_reads_the_colour_word():
    expected = torch.tensor([COLOURS["red"], COLOURS["blue"]])
    assert torch.equal(prompt_colours(["a red apple", "the blue car"]), expected)
    with pytest.raises(ValueError, match="'a car' names none of the colours red, blue"):
        prompt_colours(["a car"])


@pytest.mark.parametrize("shift", [False, True])
def test_fit_latent_scale_normalises_the_latents_and_decodes_back(tmp_path, shift):
    path = make_tiny_diffusion(tmp_path / "sd", kind="sd3" if shift else "sd")
    vae = DiffusionPipeline.from_pretrained(path, **absent_components(str(path))).vae
    images = disc_images(torch.rand(16, 3), 32, torch.Generator().manual_seed(1))
    z = fit_latent_scale(vae, images, shift)
    assert z.std().item() == pytest.approx(1.0, abs=1e-4)
    if shift:
        assert z.mean().item() == pytest.approx(0.0, abs=1e-4)
    raw = vae.encode(images).latent_dist.mean
    back = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)  # what the pipelines decode
    assert torch.allclose(back, raw, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_pretraining_lowers_the_denoising_loss(tmp_path, kind):
    path = make_tiny_diffusion(tmp_path / kind, kind=kind)
    pipe = DiffusionPipeline.from_pretrained(path, **absent_components(str(path)))
    policy = DiffusionPolicy(pipe, kind, torch.device("cpu"), max_sequence_length=8)
    losses = pretrain_tiny(policy, 32, 40, torch.Generator().manual_seed(0), batch_size=16, progress=False)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.85 * first, (first, last)
    assert not any(p.requires_grad for p in policy.denoiser.parameters())


def test_tiny_pretrain_steps_builds_its_own_cached_pipeline(tmp_path):
    cfg = load_config(DiffusionConfig, None, [f"model.cache_dir={tmp_path}", "model.resolution=16"]).model
    random_path = resolve_pipeline_path(cfg)
    cfg.tiny_pretrain_steps = 3
    trained_path = resolve_pipeline_path(cfg)
    assert random_path.endswith("tiny-sd-r16") and trained_path.endswith("tiny-sd-r16-p3")
    random_pipe, trained = (DiffusionPipeline.from_pretrained(p) for p in (random_path, trained_path))
    assert random_pipe.vae.config.scaling_factor == 0.18215 != trained.vae.config.scaling_factor
    weights = dict(random_pipe.unet.named_parameters())
    assert any(not torch.equal(weights[n], p) for n, p in trained.unet.named_parameters())
    assert all(torch.equal(a, b) for a, b in zip(random_pipe.text_encoder.parameters(),
                                                 trained.text_encoder.parameters()))
    with pytest.raises(ConfigError, match="pretrain_steps=-1"):
        make_tiny_diffusion(tmp_path / "bad", pretrain_steps=-1)


def test_the_world_and_the_vae_steps_name_their_own_cached_pipeline(tmp_path):
    cfg = load_config(DiffusionConfig, None, [f"model.cache_dir={tmp_path}", "model.resolution=24",
                                              "model.tiny_pretrain_steps=2", "model.tiny_world=mini_geneval",
                                              "model.tiny_vae_steps=3"]).model
    path = resolve_pipeline_path(cfg)
    assert path.endswith("tiny-sd-r24-p2-v3-mini_geneval")
    random_vae = DiffusionPipeline.from_pretrained(make_tiny_diffusion(tmp_path / "random", resolution=24)).vae
    trained = DiffusionPipeline.from_pretrained(path).vae
    assert any(not torch.equal(a, b) for a, b in zip(random_vae.parameters(), trained.parameters()))
    with pytest.raises(ConfigError, match="unknown pre-training world 'moon'; valid: discs, mini_geneval"):
        make_tiny_diffusion(tmp_path / "bad", pretrain_steps=1, world="moon")
    with pytest.raises(ConfigError, match="vae_steps=3 needs pretrain_steps > 0"):
        make_tiny_diffusion(tmp_path / "bad", vae_steps=3)


def test_training_the_vae_lowers_its_reconstruction_error_on_the_world(tmp_path):
    images, _ = PRETRAIN_WORLDS.get("mini_geneval")(64, 32, torch.Generator().manual_seed(0))
    vae = DiffusionPipeline.from_pretrained(make_tiny_diffusion(tmp_path / "sd")).vae
    losses = fit_autoencoder(vae, images, 60, torch.Generator().manual_seed(0), batch_size=16, progress=False)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


def test_cli_pretrain_steps(tmp_path, capsys):
    main(["make-tiny-diffusion", str(tmp_path / "p2"), "--resolution", "16", "--pretrain-steps", "2"])
    assert "(16x16, pre-trained 2 steps on discs)" in capsys.readouterr().out
    assert DiffusionPipeline.from_pretrained(tmp_path / "p2").vae.config.scaling_factor != 0.18215


def test_shipped_awm_tiny_config_trains_from_its_pretrained_pipeline(tmp_path):
    """configs/diffusion/awm/tiny.yaml end to end, shortened (4 pre-training steps instead of 600, 2 AWM steps
    instead of 40): it loads, builds and caches its pre-trained pipeline, and trains AWM from it. Its claim, that
    the full run raises the reward (+0.17 to +0.30 over seeds 0-3), is a benchmark, as for every task but the
    main job: ``python benchmarks/diffusion_tiny.py --part configs --algorithms awm --seeds 0 1 2 3``
    (benchmarks/RESULTS.md)."""
    cfg = load_config(DiffusionConfig, ROOT / "configs" / "diffusion" / "awm" / "tiny.yaml",
                      [f"model.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}", "progress=false",
                       "log_rollouts=false", "seed=0", "model.tiny_pretrain_steps=4", "optim.steps=2"])
    summary = train(cfg)
    assert (tmp_path / "cache" / "models" / "tiny-sd-r32-p4" / "model_index.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[key]) for r in rows for key in ("reward/mean", "loss", "grad_norm"))
    assert summary["reward"]["first"] == pytest.approx(sum(r["reward/mean"] for r in rows) / 2)
