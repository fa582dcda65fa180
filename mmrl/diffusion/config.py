"""Typed configuration of ``mmrl diffusion train ALGORITHM``: one dataclass tree, YAML files as overrides.

Each algorithm reads the shared sections (model, prompts, rewards, sampling, optim) and its own section
(``alignprop``, ``ddpo``, ``flow_grpo``, ``awm``); see ``mmrl.diffusion.algorithms`` for the registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DiffusionLoraConfig:
    enabled: bool = True
    """Train LoRA adapters on the denoiser (peft) instead of all its weights; the reference model for KL and
    regularisers is then the same denoiser with adapters disabled (no second copy in memory)."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 8
    """LoRA scaling numerator (scale = alpha / r)."""
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """Module-name suffixes of the denoiser that get adapters (the attention projections of UNet and MMDiT)."""


@dataclass
class DiffusionModelConfig:
    path: str = "tiny-sd"
    """A diffusers pipeline folder or hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5,
    stabilityai/stable-diffusion-3.5-medium), or ``tiny-sd`` / ``tiny-sd3`` to build (once, cached) a tiny local
    pipeline with random weights."""
    tiny_pretrain_steps: int = 0
    """``tiny-sd`` / ``tiny-sd3`` only: pre-train the tiny denoiser for this many steps on synthetic disc images
    before RL (``mmrl.diffusion.pretrain``; 0 keeps it random). AWM needs it: its pre-training loss measures the
    likelihood of the model's samples only when the model is a diffusion model of something."""
    cache_dir: str = "~/.cache/mmrl"
    """Where tiny pipelines are cached."""
    dtype: str = "auto"
    """Weights of the frozen parts (text encoders, VAE, the LoRA base): float32, bfloat16, float16, or auto
    (bfloat16 on CUDA, float32 on CPU). Trainable weights stay float32; on CUDA the denoiser runs under autocast."""
    resolution: int = 32
    """Image height and width in pixels."""
    gradient_checkpointing: bool = False
    """Recompute the denoiser's activations in the backward pass (diffusers' own checkpointing)."""
    max_sequence_length: int = 256
    """T5 tokens per prompt of SD3 pipelines (diffusers' default 256); without T5 (the tiny sd3 pipeline) the T5
    part of the embedding is this many zero tokens, so a small value only saves time."""
    lora: DiffusionLoraConfig = field(default_factory=DiffusionLoraConfig)
    """LoRA settings."""


@dataclass
class PromptsConfig:
    file: str | None = None
    """Prompt file: plain text (one prompt per line) or JSON lines with a ``prompt`` field (GenEval's
    evaluation_metadata.jsonl works as is). None: use ``prompts.list``."""
    list: list[str] = field(default_factory=lambda: ["a red apple", "a blue car", "a green tree", "a yellow duck"])
    """Prompts used when no file is given."""


@dataclass
class RewardSpec:
    name: str = "jpeg_compressibility"
    """A name from ``rewards.image.IMAGE_REWARDS``."""
    weight: float = 1.0
    """Weight of this reward in the total."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the reward (e.g. ``pretrained``, ``target``)."""


@dataclass
class SamplingConfig:
    steps: int = 10
    """Denoising steps of the training rollouts."""
    eval_steps: int = 40
    """Denoising steps of deterministic evaluation sampling (ODE / DDIM η = 0)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1 = off: one denoiser call per step)."""
    eta: float = 1.0
    """DDIM stochasticity η of training rollouts on DDIM pipelines (DDPO uses 1)."""
    noise_level: float = 0.7
    """Flow-GRPO's SDE noise level a of training rollouts on flow-matching pipelines."""


@dataclass
class OptimConfig:
    steps: int = 40
    """Training steps (each: sample a batch of images, score it, update)."""
    prompts_per_step: int = 4
    """Distinct prompts drawn per step."""
    images_per_prompt: int = 4
    """Images sampled per prompt (the group size G of Flow-GRPO and AWM)."""
    micro_batch_size: int = 16
    """Images per forward/backward; gradients accumulate over a step's micro-batches."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""


@dataclass
class AlignPropConfig:
    grad_steps: int = 1
    """K: gradients flow only through the last K denoising steps (AlignProp's truncated backprop)."""
    random_grad_steps: bool = False
    """Draw K per rollout uniformly from 1..grad_steps instead of using it fixed."""


@dataclass
class PPOConfig:
    mu: int = 1
    """Inner optimisation epochs over each step's rollouts."""
    clip_range: float = 1e-4
    """PPO ratio clip ε (DDPO and Flow-GRPO use 1e-4)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to ±this."""
    timestep_fraction: float = 1.0
    """Fraction of each trajectory's steps trained on (drawn per sample and epoch)."""


@dataclass
class DDPOConfig:
    stat_buffer: int = 32
    """Per-prompt reward statistics keep this many most recent rewards per prompt."""
    stat_min_count: int = 16
    """Below this many rewards for a prompt, the batch's statistics are used instead."""


@dataclass
class FlowGRPOConfig:
    beta: float = 0.0
    """KL coefficient to the reference model: β·mean((μθ − μref)²)/(2·std²) per step."""
    global_std: bool = False
    """Normalise advantages by the std of the whole batch instead of the group's."""


@dataclass
class AWMConfig:
    timesteps_per_sample: int = 4
    """Noise levels per final image, stratified over (0, 1): one uniform draw in each of this many bins."""
    reg_weight: float = 0.01
    """Weight of the velocity regulariser mean((vθ − v_base)²) to the base model."""
    global_std: bool = False
    """Normalise advantages by the std of the whole batch instead of the group's."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to ±this."""


@dataclass
class DiffusionConfig:
    algorithm: str = "ddpo"
    """alignprop, ddpo, flow_grpo or awm."""
    output_dir: str = "runs/diffusion"
    """Run directory: metrics.jsonl, rollouts/, checkpoints/, tb/, summary.json."""
    seed: int = 0
    """Seed of initialisation, prompt draws and sampling noise."""
    resume: bool = False
    """Continue from the last checkpoint in ``output_dir``."""
    overwrite: bool = False
    """Start afresh in an ``output_dir`` that holds an earlier run, deleting that run's files."""
    save_every: int = 20
    """Checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_rollouts: bool = True
    """Write every step's images and rewards under ``rollouts/``."""
    log_images_per_step: int = 16
    """At most this many images per step are saved as PNG (rewards are logged for all)."""
    progress: bool = True
    """Show a progress bar."""
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    """Pipeline and adapters."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    """Training prompts."""
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    """Weighted image rewards."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Rollout and evaluation sampling."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Steps, batch and optimiser."""
    alignprop: AlignPropConfig = field(default_factory=AlignPropConfig)
    """AlignProp settings."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Clipped policy-gradient updates shared by DDPO and Flow-GRPO."""
    ddpo: DDPOConfig = field(default_factory=DDPOConfig)
    """DDPO settings."""
    flow_grpo: FlowGRPOConfig = field(default_factory=FlowGRPOConfig)
    """Flow-GRPO settings."""
    awm: AWMConfig = field(default_factory=AWMConfig)
    """AWM settings."""
