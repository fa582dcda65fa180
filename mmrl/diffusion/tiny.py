"""Tiny Stable Diffusion 1.x / SD3 pipelines written locally, loadable with ``DiffusionPipeline.from_pretrained``.

Model hubs are unreachable on the development machines, so diffusion tests and tiny runs use pipelines made here
with random weights. ``make_tiny_diffusion`` writes a complete diffusers folder (``model_index.json`` and one
sub-folder per component, weights as safetensors) laid out exactly like the real checkpoints, so it loads through
the calls users make on SD 1.5 and SD 3.5: ``DiffusionPipeline.from_pretrained(path)`` (or
``StableDiffusionPipeline`` / ``StableDiffusion3Pipeline.from_pretrained``), and each component alone with
``from_pretrained(path, subfolder=...)``.

``kind="sd"`` (SD 1.x layout, ``StableDiffusionPipeline``)::

    model_index.json   safety_checker, feature_extractor, image_encoder saved as [null, null] (absent)
    unet/              UNet2DConditionModel: (32, 64) channels, 1 layer/block, cross-attn in the 32 and mid blocks
    vae/               AutoencoderKL: 4 latent channels, downsamples by 4, scaling_factor 0.18215
    text_encoder/      CLIPTextModel: hidden 32, 2 layers, 2 heads, 77 positions, quick_gelu (as CLIP ViT-L)
    tokenizer/         the character-level CLIP tokenizer of ``mmrl.models.tiny_clip``
    scheduler/         DDIMScheduler with SD 1.5's settings (scaled_linear 0.00085-0.012, steps_offset 1, epsilon)

``kind="sd3"`` (SD3 / SD3.5 layout, ``StableDiffusion3Pipeline``)::

    model_index.json   text_encoder_3, tokenizer_3 (T5), image_encoder, feature_extractor saved as [null, null]
    transformer/       SD3Transformer2DModel: patch 2, 2 joint blocks, 2 heads x 16, qk RMSNorm (as SD3.5)
    vae/               AutoencoderKL: 16 latent channels, downsamples by 4, no quant convs, SD3's shift/scaling
    text_encoder/      CLIPTextModelWithProjection: hidden 32, projection 32 (the CLIP-L slot, quick_gelu)
    text_encoder_2/    CLIPTextModelWithProjection: hidden 32, projection 32 (the CLIP-G slot, gelu)
    tokenizer/, tokenizer_2/   the character-level CLIP tokenizer
    scheduler/         FlowMatchEulerDiscreteScheduler(shift=3.0), as SD3

There is no T5 encoder. ``StableDiffusion3Pipeline`` supports that natively: with ``text_encoder_3=None`` its
``_get_t5_prompt_embeds`` returns zeros of shape ``(batch, max_sequence_length, joint_attention_dim)``, the same as
dropping T5 from a real SD3.5 checkpoint. ``save_pretrained`` records the absent components as ``[null, null]`` in
``model_index.json``, but diffusers 0.42 loads a null component only if the pipeline lists it as optional, and
SD3 does not list T5: a plain ``from_pretrained(path)`` raises "expected [...] but only {...} were passed". Load
with ``from_pretrained(path, text_encoder_3=None, tokenizer_3=None)``, which is diffusers' documented way to drop
T5 from real SD3 folders, or generically with ``from_pretrained(path, **absent_components(path))`` (``mmrl.diffusion.pipeline``). The "sd"
folder loads with a plain ``from_pretrained(path)``. ``joint_attention_dim`` (64) is the concatenated width of
the two CLIP hidden states, so the pipeline's padding of the CLIP embeddings to the T5 width does nothing, and
``pooled_projection_dim`` (64) is the concatenated width of the two pooled projections.

Sizes at the default ``resolution=32`` (the VAE factor is 4: ``2 ** (len(vae.block_out_channels) - 1)``):

=====  ===========  ======================================================================================
kind   latent       parameters
=====  ===========  ======================================================================================
sd     (4, 8, 8)    unet 792,964; vae 242,327; text_encoder 24,032; total 1,059,323
sd3    (16, 8, 8)   transformer 82,944; vae 252,627; text_encoder and text_encoder_2 25,056 each; total 385,683
=====  ===========  ======================================================================================

``pretrain_steps`` (``mmrl make-tiny-diffusion --pretrain-steps``, ``model.tiny_pretrain_steps``) first trains the
denoiser briefly on synthetic images of coloured discs (``mmrl.diffusion.pretrain``): 600 steps take about 75 s
on 2 cores, and the AWM and Flow-GRPO tiny configs start from that model. ``world`` (``--world``,
``model.tiny_world``) picks other synthetic images, e.g. ``mini_geneval``'s shapes, and ``vae_steps``
(``--vae-steps``, ``model.tiny_vae_steps``) trains the VAE on them first, so that samples decode to that world.

(At resolution R the latent is ``(C, R/4, R/4)``; the SD3 transformer sees ``(R/8)**2`` patches, plus 77 CLIP and
``max_sequence_length`` (default 256) zero T5 tokens, so passing ``max_sequence_length=8`` or so speeds it up.)
Sampling 8 images at 32x32 with 10 steps and classifier-free guidance (pipeline defaults) takes about 0.16 s (sd)
and 0.25 s (sd3; 0.05 s with ``max_sequence_length=8``) on 2 idle CPU cores, 0.25-0.5 s on one thread; torch's
default thread count on cores busy with other work can make it several times slower.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from mmrl.diffusion.policy import DiffusionPolicy
from mmrl.diffusion.pretrain import pretrain_tiny
from mmrl.errors import ConfigError
from mmrl.plugins import PRETRAIN_WORLDS
from mmrl.models.tiny_clip import write_clip_tokenizer
from mmrl.store import publish_dir

KINDS = ("sd", "sd3")
VAE_BLOCKS = (16, 32, 32)
"""VAE channels per resolution level: three levels, so the VAE downsamples by ``2 ** 2 = 4``."""
VAE_FACTOR = 2 ** (len(VAE_BLOCKS) - 1)
LATENT_CHANNELS = {"sd": 4, "sd3": 16}
SD3_LAYERS, SD3_HEADS, SD3_HEAD_DIM = 2, 2, 16
"""Size of the tiny SD3 transformer (joint blocks, attention heads, head width)."""
PATCH_SIZE = 2
"""SD3 transformer patch size; the SD UNet also halves the latent once, so both need ``R % (4 * 2) == 0``."""


def latent_shape(kind: str, resolution: int) -> tuple[int, int, int]:
    """``(channels, height, width)`` of one image's latent in the tiny ``kind`` pipeline."""
    return (LATENT_CHANNELS[kind], resolution // VAE_FACTOR, resolution // VAE_FACTOR)


def _text_encoder(tokenizer, *, projection: bool, hidden_act: str):
    """A 2-layer CLIP text encoder whose vocabulary and special-token ids are the tokenizer's."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(kind: str, resolution: int):
    """An AutoencoderKL downsampling by ``VAE_FACTOR``: SD 1.x's (4 channels, quant convs) or SD3's (16, none)."""
    from diffusers import AutoencoderKL

    sd3 = {"shift_factor": 0.0609, "scaling_factor": 1.5305, "use_quant_conv": False, "use_post_quant_conv": False}
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS[kind],
        norm_num_groups=8,
        sample_size=resolution,
        **(sd3 if kind == "sd3" else {"scaling_factor": 0.18215}),
    )


def _sd_pipeline(folder: Path, resolution: int):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = write_clip_tokenizer(folder / "tokenizer")
    text_encoder = _text_encoder(tokenizer, projection=False, hidden_act="quick_gelu")
    vae = _vae("sd", resolution)
    unet = UNet2DConditionModel(
        sample_size=resolution // VAE_FACTOR,
        in_channels=LATENT_CHANNELS["sd"],
        out_channels=LATENT_CHANNELS["sd"],
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=4,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _sd3_pipeline(folder: Path, resolution: int):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer = write_clip_tokenizer(folder / "tokenizer")
    tokenizer_2 = write_clip_tokenizer(folder / "tokenizer_2")
    text_encoder = _text_encoder(tokenizer, projection=True, hidden_act="quick_gelu")
    text_encoder_2 = _text_encoder(tokenizer_2, projection=True, hidden_act="gelu")
    vae = _vae("sd3", resolution)
    grid = resolution // VAE_FACTOR // PATCH_SIZE
    heads, head_dim = SD3_HEADS, SD3_HEAD_DIM
    transformer = SD3Transformer2DModel(
        sample_size=resolution // VAE_FACTOR,
        patch_size=PATCH_SIZE,
        in_channels=LATENT_CHANNELS["sd3"],
        out_channels=LATENT_CHANNELS["sd3"],
        num_layers=SD3_LAYERS,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
        pos_embed_max_size=2 * grid,
        qk_norm="rms_norm",
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=None, tokenizer_3=None,
    )


def _pretrain(pipe, kind: str, resolution: int, steps: int, seed: int, progress: bool, world: str,
              vae_steps: int) -> None:
    policy = DiffusionPolicy(pipe, kind, torch.device("cpu"))
    pretrain_tiny(policy, resolution, steps, torch.Generator().manual_seed(seed), progress=progress, world=world,
                  vae_steps=vae_steps)


def make_tiny_diffusion(out_dir: str | Path, kind: str = "sd", seed: int = 0, resolution: int = 32,
                        pretrain_steps: int = 0, progress: bool = True, world: str = "discs",
                        vae_steps: int = 0) -> Path:
    """Write a tiny random ``kind`` pipeline ("sd": SD 1.x layout, "sd3": SD3/SD3.5 layout without T5) to
    ``out_dir`` and return its path. Same ``seed`` -> byte-identical files; the caller's torch RNG is untouched.
    ``resolution`` (a multiple of 8) sets the default sample size; the latent is ``latent_shape(kind, R)``. The
    SD3 transformer's position table covers up to ``2 * resolution``. ``pretrain_steps > 0`` first pre-trains
    the denoiser on the synthetic images of ``world`` (``mmrl.diffusion.pretrain``; its VAE too for
    ``vae_steps``; seeded, but CPU float sums may differ between thread counts, so its files are reproducible
    on one machine rather than byte-identical everywhere).

    The folder is built beside ``out_dir`` and moved into place in one rename, replacing an older pipeline there;
    an existing non-empty ``out_dir`` that is not a diffusers folder (no ``model_index.json``) is refused."""
    if kind not in KINDS:
        raise ConfigError(f"unknown tiny diffusion kind {kind!r}; valid: {', '.join(KINDS)}")
    step = VAE_FACTOR * PATCH_SIZE
    if resolution < step or resolution % step:
        raise ConfigError(f"resolution={resolution} must be a positive multiple of {step} (VAE factor "
                          f"{VAE_FACTOR} x {PATCH_SIZE}, the UNet downsampling / SD3 patch size)")
    if pretrain_steps < 0 or vae_steps < 0:
        raise ConfigError(f"pretrain_steps={pretrain_steps} and vae_steps={vae_steps} must be >= 0")
    if vae_steps and not pretrain_steps:
        raise ConfigError(f"vae_steps={vae_steps} needs pretrain_steps > 0 (the VAE is trained as part of it)")
    if world not in PRETRAIN_WORLDS:
        raise ConfigError(f"unknown pre-training world {world!r}; valid: {', '.join(PRETRAIN_WORLDS.names())}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise ConfigError(f"{out} exists and is not a diffusers pipeline folder (no model_index.json); "
                          "refusing to replace it")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipe = (_sd_pipeline if kind == "sd" else _sd3_pipeline)(tmp, resolution)
            if pretrain_steps > 0:
                _pretrain(pipe, kind, resolution, pretrain_steps, seed, progress, world, vae_steps)
            pipe.save_pretrained(tmp, safe_serialization=True)
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
