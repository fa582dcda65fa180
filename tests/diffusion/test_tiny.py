"""Tests for mmrl.diffusion.tiny (the tiny SD 1.x / SD3 pipeline factory).

The tiny pipelines must load through the same ``from_pretrained`` calls users make on real SD 1.5 / SD 3.5
folders, with tokenizer ids consistent with the text encoders, so everything here goes through files on disk.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTokenizer

from mmrl.cli import main
from mmrl.diffusion.pipeline import absent_components
from mmrl.diffusion.tiny import VAE_FACTOR, latent_shape, make_tiny_diffusion
from mmrl.errors import ConfigError

R = 32
KINDS = ["sd", "sd3"]
TEXT_PAIRS = {"sd": [("tokenizer", "text_encoder")],
              "sd3": [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny pipeline folder per kind (seed 0, resolution R), written once for the module (~0.2 s each)."""
    root = tmp_path_factory.mktemp("tiny-diffusion")
    return {kind: make_tiny_diffusion(root / kind, kind=kind, seed=0, resolution=R) for kind in KINDS}


@pytest.fixture(scope="module")
def pipes(tiny):
    loaded = {}
    for kind, path in tiny.items():
        pipe = DiffusionPipeline.from_pretrained(path, **absent_components(path))
        pipe.set_progress_bar_config(disable=True)
        loaded[kind] = pipe
    return loaded


def file_hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sd_loads_like_sd15(tiny, pipes):
    pipe = pipes["sd"]
    assert type(pipe) is StableDiffusionPipeline
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    sched = pipe.scheduler
    assert type(sched) is DDIMScheduler
    expected = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"}
    assert {k: sched.config[k] for k in expected} == expected
    assert pipe.vae.config.scaling_factor == 0.18215 and pipe.vae.config.latent_channels == 4
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == 4
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.unet.config.sample_size == R // VAE_FACTOR
    # SD 1.x folders load with no extra arguments: the safety checker is an optional component
    plain = DiffusionPipeline.from_pretrained(tiny["sd"])
    assert type(plain) is StableDiffusionPipeline and plain.safety_checker is None


def test_sd3_loads_like_sd35_without_t5(tiny, pipes):
    pipe = pipes["sd3"]
    assert type(pipe) is StableDiffusion3Pipeline
    assert isinstance(pipe.transformer, SD3Transformer2DModel) and not hasattr(pipe, "unet")
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler and pipe.scheduler.config.shift == 3.0
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    index = json.loads((tiny["sd3"] / "model_index.json").read_text())
    assert index["text_encoder_3"] == index["tokenizer_3"] == [None, None]
    assert {"text_encoder_3", "tokenizer_3"} <= set(absent_components(tiny["sd3"]))
    vae, tr = pipe.vae.config, pipe.transformer.config
    assert (vae.shift_factor, vae.scaling_factor) == (0.0609, 1.5305)
    assert tr.in_channels == tr.out_channels == vae.latent_channels == 16 and tr.patch_size == 2
    assert tr.joint_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert tr.pooled_projection_dim == (pipe.text_encoder.config.projection_dim
                                        + pipe.text_encoder_2.config.projection_dim)
    # the T5 slot of the prompt embedding is zeros, after the 77 CLIP tokens
    prompt = "a red cube"
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, prompt, prompt, do_classifier_free_guidance=False,
                                              max_sequence_length=8)
    assert embeds.shape == (1, 77 + 8, tr.joint_attention_dim) and pooled.shape == (1, tr.pooled_projection_dim)
    assert embeds[:, 77:].abs().sum() == 0 and embeds[:, :77].abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_samples_images_and_latents(pipes, kind):
    pipe = pipes[kind]
    out = pipe(["a red cube", "a dog"], num_inference_steps=2, height=R, width=R, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 3, R, R)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0.01
    assert not torch.allclose(out[0], out[1])
    latents = pipe(["a red cube"], num_inference_steps=2, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (1, *latent_shape(kind, R))


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_ids_match_text_encoder(tiny, kind):
    for tok_dir, enc_dir in TEXT_PAIRS[kind]:
        tok = CLIPTokenizer.from_pretrained(tiny[kind], subfolder=tok_dir)
        cfg = CLIPTextConfig.from_pretrained(tiny[kind], subfolder=enc_dir)
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        assert cfg.vocab_size == len(tok) and cfg.max_position_embeddings == tok.model_max_length == 77
        ids = tok("a red cube", padding="max_length", max_length=77).input_ids
        assert ids[0] == cfg.bos_token_id and cfg.eos_token_id in ids and max(ids) < cfg.vocab_size


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed(tiny, tmp_path, kind):
    again = file_hashes(make_tiny_diffusion(tmp_path / "again", kind=kind, seed=0, resolution=R))
    assert again == file_hashes(tiny[kind])
    other = file_hashes(make_tiny_diffusion(tmp_path / "other", kind=kind, seed=1, resolution=R))
    weights = [name for name in again if name.endswith(".safetensors")]
    assert len(weights) == (3 if kind == "sd" else 4)
    assert all(other[name] != again[name] for name in weights)


def test_leaves_the_callers_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_diffusion(tmp_path / "p", kind="sd", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_replaces_a_pipeline_but_not_other_folders(tmp_path):
    out = make_tiny_diffusion(tmp_path / "p", kind="sd")
    make_tiny_diffusion(out, kind="sd3")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    assert not (out / "unet").exists() and [p.name for p in tmp_path.iterdir()] == ["p"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a diffusers pipeline"):
        make_tiny_diffusion(precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="valid: sd, sd3"):
        make_tiny_diffusion(tmp_path / "a", kind="flux")
    with pytest.raises(ConfigError, match="multiple of 8"):
        make_tiny_diffusion(tmp_path / "b", resolution=36)
    assert not any(tmp_path.iterdir())


def test_cli_writes_a_loadable_pipeline(tmp_path, capsys):
    out = tmp_path / "cli-sd3"
    main(["make-tiny-diffusion", str(out), "--kind", "sd3", "--seed", "1", "--resolution", "16"])
    assert str(out) in capsys.readouterr().out
    pipe = DiffusionPipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is StableDiffusion3Pipeline
    images = pipe("a dog", num_inference_steps=1, output_type="pt", max_sequence_length=8,
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 16, 16)
