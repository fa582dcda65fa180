"""Typed configuration: dataclasses with a docstring per field, YAML files as overrides, ``key=value`` on the CLI.

``load_config(TrainConfig, "my_run.yaml", ["grpo.lr=1e-5"])`` builds the dataclass from the
defaults, then the YAML file, then the overrides. An unknown key or a value of the wrong type raises
``ConfigError`` naming the key (and the valid keys), and so does a number outside its field's range (the
``LIMITS`` of its dataclass, ``check_limits``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from mmrl.errors import ConfigError, read_text
from mmrl.typed import build, check_type, deep_merge  # noqa: F401  (re-exported)
from mmrl.vision import VideoBudget


@dataclass(frozen=True)
class Limit:
    """The valid range of a numeric config value: finite, at least ``low`` (above it when ``open_low``) and at most
    ``high``; ``None``: no bound on that side."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        return math.isfinite(value) and above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        bounds = [f"{'>' if self.open_low else '>='} {self.low:g}"] if self.low is not None else []
        bounds += [f"<= {self.high:g}"] if self.high is not None else []
        return " and ".join(["finite", *bounds])


AT_LEAST_0, AT_LEAST_1, POSITIVE = Limit(0), Limit(1), Limit(0, open_low=True)
PROBABILITY = Limit(0, 1)


def check_limits(cfg: Any, prefix: str = "") -> None:
    """Every number of the dataclass ``cfg``, and of the dataclasses it holds (lists of them too), within the
    ``LIMITS`` (field name -> ``Limit``) of its class; ``ConfigError`` naming the key otherwise. ``None`` (an unset
    optional value) is always valid."""
    limits = getattr(type(cfg), "LIMITS", {})
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_limits(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_limits(item, f"{key}[{i}].")
        elif f.name in limits and value is not None and not limits[f.name].admits(value):
            raise ConfigError(f"config key '{key}': {value!r} must be {limits[f.name]}")


@dataclass
class LoraConfig:
    LIMITS = {"r": AT_LEAST_1, "alpha": POSITIVE, "dropout": PROBABILITY}

    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights; the reference policy is the adapter-disabled model."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module-name suffixes that get adapters (the language model's; the vision tower is matched only when
    ``freeze_vision`` is false)."""


@dataclass
class ModelConfig:
    LIMITS = {"tiny_rope_theta": POSITIVE, "min_pixels": AT_LEAST_1, "max_pixels": AT_LEAST_1}

    path: str = "tiny"
    """A Hugging Face checkpoint id or folder, or ``tiny`` to build (once, cached) a tiny local model."""
    tiny_family: str = "qwen2_5_vl"
    """Family of the tiny model built when ``path: tiny``: qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_5 or smolvlm (see
    ``mmrl.models.tiny.FAMILIES``)."""
    tiny_size: str = "tiny"
    """Size of the tiny model built when ``path: tiny`` (tiny or small)."""
    tiny_rope_theta: float | None = None
    """Rotary base of the tiny model built when ``path: tiny`` (null: the size's own, 10). Video prompts put
    their visual tokens ~100 positions before the answer; at base 10 every rotary frequency turns several times
    over that distance, so content-based attention that far back is hard for a tiny model."""
    cache_dir: str = "~/.cache/mmrl"
    """Where tiny models and synthetic data are cached."""
    dtype: str = "auto"
    """float32, bfloat16, float16, or auto (bfloat16 on CUDA, float32 on CPU)."""
    attn_implementation: str | None = None
    """Passed to ``from_pretrained`` (e.g. sdpa, flash_attention_2); None lets transformers choose."""
    freeze_vision: bool = False
    """Keep the vision tower (and merger) frozen."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    min_pixels: int = 56 * 56
    """Smallest image area after Qwen's smart_resize."""
    max_pixels: int = 28 * 28 * 1280
    """Largest image area after Qwen's smart_resize (the per-image pixel budget)."""
    video: VideoBudget = field(default_factory=VideoBudget)
    """Video sampling (fps, frame counts) and per-frame / total pixel budgets, for tasks with video input."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings."""


@dataclass
class SFTConfig:
    LIMITS = {"steps": AT_LEAST_0, "batch_size": AT_LEAST_1, "lr": AT_LEAST_0,
              "warmup_steps": AT_LEAST_0, "weight_decay": AT_LEAST_0}

    steps: int = 0
    """Supervised cold-start steps on the task's ground-truth answers before RL (0 = none)."""
    batch_size: int = 16
    """Samples per SFT step."""
    lr: float = 3e-4
    """Peak learning rate of the SFT phase."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default)."""


@dataclass
class GRPOConfig:
    LIMITS = {
        "steps": AT_LEAST_0, "prompts_per_step": AT_LEAST_1, "temperature": POSITIVE,
        "top_p": Limit(0, 1, open_low=True), "max_new_tokens": AT_LEAST_1, "mu": AT_LEAST_1,
        "micro_batch_size": AT_LEAST_1, "lr": AT_LEAST_0, "weight_decay": AT_LEAST_0, "warmup_steps": AT_LEAST_0,
        "max_grad_norm": AT_LEAST_0, "max_consecutive_skips": AT_LEAST_0, "beta": AT_LEAST_0,
        "max_refill_rounds": AT_LEAST_0, "ground_truth_gamma": AT_LEAST_0,
        "entropy_coef": Limit(), "entropy_target": AT_LEAST_0, "entropy_coef_delta": AT_LEAST_0,
        "entropy_coef_min": Limit(), "entropy_coef_max": Limit(),
    }  # group_size >= 2 is checked with the algorithm (mmrl.algorithms.build_algorithm)

    steps: int = 100
    """Number of RL steps (each: sample, score, then ``mu`` optimisation epochs)."""
    prompts_per_step: int = 8
    """Distinct prompts drawn per step."""
    group_size: int = 8
    """Completions G sampled per prompt."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the rollouts."""
    max_new_tokens: int = 32
    """Completion length cap; a completion that hits it without EOS is flagged truncated."""
    mu: int = 1
    """Optimisation epochs over each step's rollouts (mu > 1 makes the PPO ratio differ from 1)."""
    micro_batch_size: int = 16
    """Completions per forward/backward; gradients accumulate over the step's micro-batches."""
    lr: float = 1e-5
    """Peak learning rate of the RL phase."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up optimizer steps."""
    lr_schedule: str = "constant"
    """constant, linear or cosine decay after warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    max_consecutive_skips: int = 3
    """An update whose loss or gradient is NaN or infinite is skipped (the weights and optimizer moments stay, the
    step counts in ``skipped_steps`` and writes no checkpoint); this many such steps in a row stop the run with an
    error, the last checkpoint intact (0 = never stop)."""
    beta: float = 0.0
    """KL coefficient to the reference policy (0 skips the reference forward unless the loss needs it)."""
    kl_estimator: str = "k3"
    """KL estimator name: k1, k2, k3, low_var_kl (see ``mmrl.algorithms.kl``)."""
    kl_in: str = "loss"
    """Where the KL penalty goes: ``loss`` (beta * KL per token added to the policy loss) or ``reward``
    (beta * the completion's summed KL subtracted from its reward before the advantages)."""
    kl_importance_ratio: str = "token"
    """With ``kl_in: loss``, the per-token KL is multiplied by the importance ratio pi_theta / pi_old, which makes
    its gradient the unbiased reverse-KL gradient (DeepSeek-V3.2): ``token`` (per-token ratio), ``sequence`` (the
    completion's geometric-mean ratio) or ``off``. On by default because TRL's ``use_bias_correction_kl`` is (TRL
    1.16); ``off`` is mmrl's KL before this option."""
    advantage: str = "grpo"
    """Advantage estimator name (see ``mmrl.algorithms.advantages`` and docs/algorithms.md)."""
    advantage_args: dict[str, Any] = field(default_factory=dict)
    """Keyword hyperparameters of the advantage estimator, e.g. ``{eps: 1e-6}``."""
    reward_combine: str = "sum"
    """Several reward components: ``sum`` (weighted sum, then the estimator) or ``per_component`` (the
    estimator on each component, then the weighted sum of advantages)."""
    policy_loss: str = "ppo_clip"
    """Policy loss name (see ``mmrl.algorithms.losses`` and docs/algorithms.md)."""
    loss_args: dict[str, Any] = field(default_factory=dict)
    """Keyword hyperparameters of the policy loss, e.g. ``{eps_low: 0.2, eps_high: 0.28}``."""
    loss_agg: str = "token_mean"
    """Loss aggregation name (see ``mmrl.algorithms.aggregation``)."""
    token_weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Token-weighting schemes and their hyperparameters, e.g. ``{precision: {weight: 2.0}}``; weights multiply."""
    entropy_coef: float = 0.0
    """Entropy bonus (TRL's ``entropy_coef``): ``entropy_coef * H`` is subtracted from the loss, ``H`` the mean
    per-token entropy of the policy over the step's loss tokens, whatever ``loss_agg`` (see
    ``mmrl.algorithms.entropy``); 0 = off, unless ``adaptive_entropy``, which starts from this value."""
    adaptive_entropy: bool = False
    """Skywork-OR1's adaptive entropy coefficient (TRL's ``use_adaptive_entropy``): the bonus applies only while the
    previous optimizer step's mean entropy was at or below ``entropy_target`` (so not on the first step), and after
    each optimizer step the coefficient moves by ``entropy_coef_delta`` up (entropy at or below the target) or down,
    within ``[entropy_coef_min, entropy_coef_max]``."""
    entropy_target: float = 0.2
    """Target mean per-token entropy (nats) of ``adaptive_entropy``."""
    entropy_coef_delta: float = 0.005
    """Step of the adaptive entropy coefficient per optimizer step."""
    entropy_coef_min: float = 0.0
    """Lower bound of the adaptive entropy coefficient."""
    entropy_coef_max: float = 1.0
    """Upper bound of the adaptive entropy coefficient."""
    overlong_filter: bool = False
    """DAPO overlong filtering: truncated completions (no EOS within max_new_tokens) get no loss."""
    dynamic_sampling: str = "off"
    """DAPO dynamic sampling of groups whose rewards are all equal (zero advantage): ``off``, ``drop`` (train
    without them) or ``refill`` (drop them and sample further prompts until ``prompts_per_step`` groups have
    varied rewards or ``max_refill_rounds`` extra rounds ran)."""
    max_refill_rounds: int = 3
    """Extra sampling rounds ``dynamic_sampling: refill`` may run per step."""
    prompt_sampler: str = "uniform"
    """How prompts are drawn: ``uniform`` (seeded epochs) or ``vas`` (MMR1 Variance-Aware Sampling)."""
    prompt_sampler_args: dict[str, Any] = field(default_factory=dict)
    """Keyword hyperparameters of the prompt sampler."""
    shared_prefix: str = "auto"
    """Log-probs with the group-shared prefix (each prompt and its images run once per group, completions
    against its repeated KV cache): ``auto`` (when the model supports it, else full sequences with a notice),
    ``shared`` (error if unsupported) or ``full`` (every completion with its own copy of the prompt)."""
    ground_truth_slot: bool = False
    """TempSamp-R1 off-policy guidance: the last of each group's ``group_size`` slots holds the sample's
    ground-truth answer instead of a sample; it joins the group's reward statistics and enters the loss through
    ``mmrl.algorithms.losses.offpolicy_guidance`` (needs ``rollout: fixed``)."""
    ground_truth_gamma: float = 0.1
    """Shaping of the ground-truth slot's importance ratio ``p / (p + gamma)`` (LUFFY); 0 = the plain ratio."""
    rollout: str = "fixed"
    """Rollout strategy: ``fixed`` (group_size completions per prompt), ``reinforce_ada`` (adaptive
    per-prompt sampling, then groups of group_size with both outcomes) or ``remax`` (group_size samples plus the
    greedy completion whose reward is ``advantage: remax``'s baseline)."""
    rollout_args: dict[str, Any] = field(default_factory=dict)
    """Keyword hyperparameters of the rollout strategy."""


@dataclass
class EvalConfig:
    LIMITS = {"batch_size": AT_LEAST_1, "max_new_tokens": AT_LEAST_1}

    batch_size: int = 32
    """Prompts per generation batch during evaluation."""
    max_new_tokens: int = 32
    """Completion length cap for evaluation (greedy decoding)."""
    before_and_after: bool = True
    """Evaluate the model RL starts from and the final model on the task's eval split."""


@dataclass
class TrainConfig:
    LIMITS = {"seed": AT_LEAST_0, "save_every": AT_LEAST_1, "keep_checkpoints": AT_LEAST_1,
              "reward_timeout": POSITIVE}

    task: str = ""
    """Task adapter name (required; ``mmrl list task`` shows the registered ones; ``mmrl train TASK`` sets it)."""
    output_dir: str = "runs/default"
    """Run directory: metrics.jsonl, rollouts/, checkpoints/, tb/, summary.json."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    resume: bool = False
    """Continue from the last checkpoint in ``output_dir``."""
    overwrite: bool = False
    """Start afresh in an ``output_dir`` that holds an earlier run, deleting that run's files (without it, such a
    folder is an error: nothing is lost by accident)."""
    save_every: int = 50
    """Checkpoint every N RL steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_rollouts: bool = True
    """Write every step's rollouts under ``rollouts/``."""
    log_media: bool = True
    """Keep a copy (a hard link when on the same file system) of each image and video the logged rollouts show under
    ``media/``, so ``mmrl demo`` can show them: it reads only files inside the run directory."""
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get every step's metrics, by accelerate's names: tensorboard (files under ``tb/``),
    wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio, or all (every one installed); all but
    tensorboard need their package (``pip install 'mmrl[wandb]'``). ``[]``: ``metrics.jsonl`` only, which is
    written whatever this says. From Python, ``train(cfg, trackers=[...])`` adds tracker objects."""
    progress: bool = True
    """Show progress bars."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy model."""
    data: dict[str, Any] = field(default_factory=dict)
    """Task data settings, checked against the task's own config dataclass."""
    rewards: dict[str, float] = field(default_factory=dict)
    """Reward name -> weight; names come from the task's reward functions or the ``REWARDS`` registry (plugins
    included; ``mmrl list``). Empty = the task's defaults."""
    reward_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword hyperparameters of registry rewards named in ``rewards``, e.g. ``{length_penalty: {limit: 64}}``."""
    reward_timeout: float | None = None
    """Seconds one reward function's call on a step's completions may take; past it they score 0 and count as
    failures (``reward/<name>/failures``). None: no limit."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised cold start."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """RL phase."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Before/after evaluation."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-5`` as a float: PyYAML follows YAML 1.1, which needs a dot
    (``1.0e-5``) and would otherwise hand the config the string ``'1e-5'``."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["grpo.lr=1e-5", "model.lora.enabled=true"]`` -> nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=_Loader) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {e}") from None
        node = nested
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}' conflicts with another override")
        node[leaf] = value
    return nested


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """``{key: value}`` of a repeatable command-line ``option``'s ``KEY=VALUE`` strings (e.g. ``--judge-arg``); a
    value is read as JSON when it parses (numbers, true, null, lists), else kept as a string. ``ConfigError`` for
    an item without ``=`` or key."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def check_options(args: Any, limits: dict[str, Limit]) -> None:
    """Each command-line option of ``limits`` (argparse dest -> ``Limit``) that was given (not ``None``) within its
    limit; ``ConfigError`` naming the option (``--max-new-tokens 0: must be finite and >= 1``) otherwise."""
    for dest, limit in limits.items():
        value = getattr(args, dest)
        if value is not None and not limit.admits(value):
            raise ConfigError(f"--{dest.replace('_', '-')} {value}: must be {limit}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a file that is missing, unreadable, not UTF-8, not YAML or not a mapping raises
    ``ConfigError`` naming the file (and the line of a syntax error). So does an empty file (or one of comments
    only): most likely a truncated or wrong file; the defaults are what no ``--config`` gives."""
    p = Path(path)
    text = read_text(p, "config", ConfigError)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or e
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(problem).split())}") from e
    except RecursionError as e:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply") from e
    if data is None:
        raise ConfigError(f"{p}: the config file holds no settings (to use every default, give no config file)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                check: Callable[[Any], None] | None = None):
    """Defaults <- YAML file <- ``key=value`` overrides, type-checked into ``cls``, its numbers checked against
    their ``LIMITS`` and then by ``check(cfg)`` when given; an error names the file or the command line as its
    source (the file's values are checked first, on their own)."""
    def checked(values: dict[str, Any]):
        cfg = build(cls, values)
        check_limits(cfg)
        if check is not None:
            check(cfg)
        return cfg

    values: dict[str, Any] = read_yaml(path) if path else {}
    try:
        checked(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        return checked(deep_merge(values, parse_overrides(overrides or [])))
    except ConfigError as e:
        raise ConfigError(f"command-line override: {e}") from None


CONFIG_PACKAGE = "mmrl_configs"
"""The repository's ``configs/`` folder as installed: pyproject.toml maps this package to the folder, so an editable
install reads the checkout's files and a wheel carries copies."""


def default_config(name: str, *, diffusion: bool = False) -> Path:
    """The shipped ``configs/<name>/tiny.yaml`` (``configs/diffusion/<name>/tiny.yaml`` for a diffusion algorithm),
    found through the import system whatever the working directory: a config of one's own goes through
    ``--config`` (``mmrl diffusion train ALGORITHM CONFIG``), never a ``configs/`` folder that happens to be in
    the working directory."""
    folders = [Path(p, "diffusion" if diffusion else "") for p in _package_folders(CONFIG_PACKAGE, "configs/")]
    folders = [f for f in folders if f.is_dir()]
    for folder in folders:
        if (folder / name / "tiny.yaml").is_file():
            return folder / name / "tiny.yaml"
    shipped = sorted({d.name for f in folders for d in f.iterdir() if (d / "tiny.yaml").is_file()})
    kind, where, hint = (("diffusion algorithm", "configs/diffusion/", "pass a CONFIG file") if diffusion
                         else ("task", "configs/", "pass --config FILE"))
    raise ConfigError(f"no default config for {kind} {name!r}: mmrl ships {where}<name>/tiny.yaml for "
                      f"{', '.join(shipped) or 'none'}; {hint}")


DATA_PACKAGE = "mmrl_data"
"""The repository's ``data/`` folder as installed (only the files a command reads by default, e.g. GenEval's
prompts; pyproject.toml lists them), mapped like ``configs/``."""


def _package_folders(package: str, folder: str) -> list[str]:
    """The folders of the namespace package ``package`` (the repository's ``folder`` as installed).

    The package has no ``__init__.py``; its folders are read from the import spec because
    ``importlib.resources.files`` rejects the non-folder entry an editable install puts in a namespace package's
    path (before Python 3.13)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ConfigError(f"the {package} package (mmrl's {folder} folder) is not installed; reinstall mmrl "
                          "(pip install -e . in a checkout)")
    return list(spec.submodule_search_locations)


def shipped_data(relative: str) -> Path:
    """The file ``data/<relative>`` that mmrl ships (``mmrl_data``), found whatever the working directory."""
    for folder in _package_folders(DATA_PACKAGE, "data/"):
        if (Path(folder) / relative).is_file():
            return Path(folder) / relative
    raise ConfigError(f"mmrl's data file {relative!r} is missing from the {DATA_PACKAGE} package; reinstall mmrl")


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
