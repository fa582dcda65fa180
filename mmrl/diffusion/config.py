"""Typed configuration of ``mmrl diffusion train ALGORITHM``: one dataclass tree, YAML files as overrides.

Each algorithm reads the shared sections (model, prompts, rewards, sampling, optim, and ``ppo`` for DDPO and
Flow-GRPO) and its own settings, ``algorithm_args``, which are checked against the config dataclass the algorithm
registered in ``mmrl.plugins.DIFFUSION_ALGORITHMS`` (``mmrl.diffusion.algorithms``; ``mmrl list`` shows the keys).
Numbers are checked against the ``LIMITS`` of their dataclass (``mmrl.config.check_limits``); the ``steer`` section's
are checked by ``mmrl.diffusion.steering.check_steer_config``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmrl.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, Limit
from mmrl.errors import ConfigError


@dataclass
class DiffusionLoraConfig:
    LIMITS = {"r": AT_LEAST_1, "alpha": POSITIVE}

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
    LIMITS = {"tiny_pretrain_steps": AT_LEAST_0, "tiny_vae_steps": AT_LEAST_0,
              "resolution": AT_LEAST_1, "max_sequence_length": AT_LEAST_1}

    path: str = "tiny-sd"
    """A diffusers pipeline folder or hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5,
    stabilityai/stable-diffusion-3.5-medium), or ``tiny-sd`` / ``tiny-sd3`` to build (once, cached) a tiny local
    pipeline with random weights."""
    tiny_pretrain_steps: int = 0
    """``tiny-sd`` / ``tiny-sd3`` only: pre-train the tiny denoiser for this many steps on synthetic disc images
    before RL (``mmrl.diffusion.pretrain``; 0 keeps it random). AWM needs it: its pre-training loss measures the
    likelihood of the model's samples only when the model is a diffusion model of something."""
    tiny_world: str = "discs"
    """``tiny-sd`` / ``tiny-sd3`` pre-training only: the synthetic images and prompts (``mmrl list 'pre-training
    world'``): ``discs`` (a coloured disc per prompt) or ``mini_geneval`` (GenEval-style scenes of shapes)."""
    tiny_vae_steps: int = 0
    """``tiny-sd`` / ``tiny-sd3`` pre-training only: first train the VAE on the world's images for this many steps
    (0 keeps it random: decoded samples are then texture, not the world's shapes)."""
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
    """A name of ``mmrl.plugins.IMAGE_REWARDS`` (``mmrl.diffusion.image_rewards``: the rewards of
    ``rewards.image``, and plugins')."""
    weight: float = 1.0
    """Weight of this reward in the total."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the reward (e.g. ``pretrained``, ``target``), checked against its keyword-only
    parameters."""


@dataclass
class SamplingConfig:
    LIMITS = {"steps": AT_LEAST_1, "eval_steps": AT_LEAST_1, "guidance_scale": AT_LEAST_0,
              "eta": AT_LEAST_0, "noise_level": AT_LEAST_0}

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
    shared_noise: bool = False
    """Every image of a group starts from the same initial noise x_T (DanceGRPO, Xue et al. 2025): the images of
    a group then differ only by the sampler's noise, the actions the policy gradient credits, so the group's
    baseline removes the part of the reward that the starting noise decides."""
    sde_window: list[int] | None = None
    """``[start, end)``: the steps of the training rollouts that are stochastic (η / a as above) and trained by
    DDPO and Flow-GRPO; the others are deterministic (DDIM η = 0, the flow ODE). Flow-GRPO-Fast and MixGRPO
    (Li et al. 2025) sample an SDE window only. The last steps' std is small (DDIM, 10 steps: 0.04 and 0.02
    against 0.26–0.78 before), so their log-prob gradients, which scale as 1/std, swamp the rest. None: every
    step."""

    def stochastic_steps(self) -> range:
        """The indices of the stochastic (trained) steps, ``sde_window`` checked against ``steps``."""
        if self.sde_window is None:
            return range(self.steps)
        window = list(self.sde_window)
        if len(window) != 2 or not 0 <= window[0] < window[1] <= self.steps:
            raise ConfigError(f"config key 'sampling.sde_window': {self.sde_window!r} must be [start, end) with "
                              f"0 <= start < end <= sampling.steps ({self.steps})")
        return range(*window)


@dataclass
class OptimConfig:
    LIMITS = {
        "steps": AT_LEAST_0, "prompts_per_step": AT_LEAST_1, "images_per_prompt": AT_LEAST_1,
        "micro_batch_size": AT_LEAST_1, "lr": AT_LEAST_0, "weight_decay": AT_LEAST_0, "max_grad_norm": AT_LEAST_0,
        "max_consecutive_skips": AT_LEAST_0,
    }

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
    max_consecutive_skips: int = 3
    """An update whose loss or gradient is NaN or infinite is skipped (the weights and optimizer moments stay, the
    step counts in ``skipped_steps`` and writes no checkpoint); this many such steps in a row stop the run with an
    error, the last checkpoint intact (0 = never stop)."""


@dataclass
class PPOConfig:
    LIMITS = {"mu": AT_LEAST_1, "clip_range": POSITIVE, "adv_clip_max": POSITIVE,
              "timestep_fraction": Limit(0, 1, open_low=True)}

    mu: int = 1
    """Inner optimisation epochs over each step's rollouts."""
    clip_range: float = 1e-4
    """PPO ratio clip ε (DDPO and Flow-GRPO use 1e-4)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to ±this."""
    timestep_fraction: float = 1.0
    """Fraction of each trajectory's steps trained on (drawn per sample and epoch)."""


@dataclass
class SteerConfig:
    """FK steering at inference (``mmrl.diffusion.steering``; ``mmrl diffusion steer`` reads this section of a
    diffusion config, its flags override it)."""

    particles: int = 4
    """Particles N per image: each steered image costs N × steps denoiser calls, as best-of-N does."""
    potential: str = "max"
    """How the rewards of a particle's x̂0 predictions become its potential: max, add, diff or rt."""
    lmbda: float = 10.0
    """λ of the potentials ``exp(λ·…)`` (``lambda`` is a Python keyword)."""
    resample_every: int = 5
    """Evaluate the potentials (decode x̂0, score it) every this many steps from ``resample_start``."""
    resample_start: int = 0
    """First step (0-based) whose x̂0 is scored."""
    resample_end: int | None = None
    """Last scheduled step, inclusive (None: the last step). The final step is always scored."""
    adaptive: bool = False
    """At a scheduled step resample only when the effective sample size is below N/2 (else always)."""
    steps: int = 40
    """Denoising steps."""
    stochasticity: float | None = None
    """DDIM η (SD 1.x) or the flow SDE's noise level a (SD3); None: 1.0 for DDIM, 0.7 for the flow SDE.
    Resampling duplicates particles, and only a stochastic sampler lets the copies diverge again."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1: off)."""
    rewards: list[RewardSpec] = field(default_factory=list)
    """The reward whose tilt ``exp(λ·r)`` the particles target (weighted sum); empty: the config's ``rewards``."""


@dataclass
class DiffusionConfig:
    LIMITS = {"seed": AT_LEAST_0, "save_every": AT_LEAST_1, "keep_checkpoints": AT_LEAST_1,
              "log_images_per_step": AT_LEAST_0}

    algorithm: str = "ddpo"
    """A name of ``mmrl.plugins.DIFFUSION_ALGORITHMS``: alignprop, ddpo, flow_grpo, awm, or a plugin's."""
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
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get every step's metrics, by accelerate's names: tensorboard (files under ``tb/``),
    wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio, or all (every one installed); all but
    tensorboard need their package (``pip install 'mmrl[wandb]'``). ``[]``: ``metrics.jsonl`` only, which is
    written whatever this says. From Python, ``train(cfg, trackers=[...])`` adds tracker objects."""
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
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Clipped policy-gradient updates shared by DDPO and Flow-GRPO."""
    steer: SteerConfig = field(default_factory=SteerConfig)
    """FK steering settings used when sampling with steering (``mmrl diffusion steer --config``)."""
    algorithm_args: dict[str, Any] = field(default_factory=dict)
    """Settings of ``algorithm``, the fields of its registered config dataclass (unset ones keep their defaults):
    ``alignprop``: grad_steps, random_grad_steps; ``ddpo``: stat_buffer, stat_min_count; ``flow_grpo``: beta,
    global_std; ``awm``: timesteps_per_sample, reg_weight, global_std, adv_clip_max."""
