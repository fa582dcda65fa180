"""``mmrl diffusion train ALGORITHM [CONFIG] [key=value ...]``, ``mmrl diffusion sample`` and ``mmrl diffusion
steer`` (FK steering)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrl.errors import ConfigError


def split_config(args: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] key=value ...``: a first argument without ``=`` is the config file."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(args) -> None:
    from accelerate import PartialState

    from mmrl.config import default_config, load_config
    from mmrl.diffusion.config import DiffusionConfig
    from mmrl.diffusion.trainer import train

    config, overrides = split_config(args.rest)
    path = Path(config) if config else default_config(args.algorithm, diffusion=True)
    cfg = load_config(DiffusionConfig, path, [*overrides, f"algorithm={args.algorithm}"])
    summary = train(cfg)
    if not PartialState().is_main_process:  # one line per run under accelerate launch
        return
    reward = summary["reward"]
    print(f"{cfg.algorithm}: mean reward {reward['first']:.4f} (first {reward['window']} steps) -> "
          f"{reward['last']:.4f} (last {reward['window']}); run in {cfg.output_dir}")


def cmd_sample(args) -> None:
    from mmrl.config import AT_LEAST_0, AT_LEAST_1, check_options
    from mmrl.diffusion.artifacts import apply_trained
    from mmrl.diffusion.config import DiffusionLoraConfig, DiffusionModelConfig
    from mmrl.diffusion.pipeline import load_policy
    from mmrl.diffusion.sample import write_samples

    check_options(args, {"n": AT_LEAST_1, "steps": AT_LEAST_1, "resolution": AT_LEAST_1, "guidance": AT_LEAST_0})
    if args.run:
        model_cfg = run_model_config(args.run)
    else:
        model_cfg = DiffusionModelConfig(path=args.model, lora=DiffusionLoraConfig(enabled=False))
    if args.resolution:
        model_cfg.resolution = args.resolution
    records = prompt_records(args)
    policy = load_policy(model_cfg)
    if args.run:
        apply_trained(policy, args.run)
    out = write_samples(policy, records, args.out, args.n, args.steps, model_cfg.resolution, args.guidance,
                        args.seed, progress=not args.quiet)
    print(f"wrote {args.n} images for each of {len(records)} prompts to {out}")


def prompt_records(args) -> list[dict]:
    """The records to sample, in order: GenEval's 553 official ones with ``--geneval`` (shipped with mmrl), else
    ``--prompt``'s then ``--prompts``' file's; only the first ``--limit`` when given. A record's index is its
    folder number (``OUT/00000`` ...), so GenEval's layout keeps the official numbering."""
    from mmrl.config import shipped_data
    from mmrl.diffusion.prompts import read_prompt_file
    from mmrl.eval.geneval import PROMPTS_FILE

    if args.geneval and (args.prompt or args.prompts):
        raise ConfigError("--geneval samples GenEval's own prompts: drop --prompt/--prompts")
    if args.geneval:
        records = read_prompt_file(shipped_data(PROMPTS_FILE))
    else:
        records = [{"prompt": p} for p in args.prompt] + (read_prompt_file(args.prompts) if args.prompts else [])
    if not records:
        raise ConfigError("give --prompt TEXT (repeatable), --prompts FILE or --geneval")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give at least 1 prompt")
    return records[:args.limit]


def add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    """The prompt sources of ``sample`` and ``steer`` (read by ``prompt_records``)."""
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="prompt file: text (one per line) or JSON lines with a 'prompt' field")
    p.add_argument("--geneval", action="store_true",
                   help="GenEval's 553 official prompts (shipped with mmrl), numbered as GenEval numbers them")
    p.add_argument("--limit", type=int, help="only the first N prompts (e.g. a quick check of --geneval)")


def run_model_config(run: str):
    """The model settings of a diffusion run directory (its ``config.json``); ``ConfigError`` or ``DataError`` naming
    the folder or the file when it is not a run directory or its ``model`` section is missing or invalid."""
    from mmrl.config import build, check_limits
    from mmrl.diffusion.config import DiffusionModelConfig
    from mmrl.eval.records import read_json

    config_file = Path(run) / "config.json"
    if not Path(run).is_dir() or not config_file.exists():
        raise ConfigError(f"{config_file}: not found (--run {run} is not a diffusion run directory)")
    saved = read_json(config_file)
    model = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(model, dict):
        raise ConfigError(f"{config_file}: no 'model' section (a mapping of the pipeline's settings)")
    try:
        cfg = build(DiffusionModelConfig, model, prefix="model.")
        check_limits(cfg, "model.")
    except ConfigError as e:
        raise ConfigError(f"{config_file}: {e}") from None
    return cfg


STEER_FLAGS = {"particles": "particles", "potential": "potential", "lmbda": "lmbda", "steps": "steps",
               "resample_every": "resample_every", "resample_start": "resample_start",
               "resample_end": "resample_end", "stochasticity": "stochasticity", "guidance": "guidance_scale"}
"""``mmrl diffusion steer`` flags (argparse dest) -> ``steer.`` config keys they override."""


def steer_config(args):
    """The ``DiffusionConfig`` of ``mmrl diffusion steer``: ``--config``'s file (its ``steer:``, ``model:`` and
    ``rewards:`` sections), then the flags."""
    from mmrl.config import load_config, parse_overrides
    from mmrl.diffusion.config import DiffusionConfig, RewardSpec
    from mmrl.diffusion.steering import check_steer_config

    overrides = [f"steer.{key}={getattr(args, dest)}" for dest, key in STEER_FLAGS.items()
                 if getattr(args, dest) is not None]
    overrides += ["steer.adaptive=true"] if args.adaptive else []
    if args.model:
        overrides.append(f"model.path={args.model}")
    overrides.append("model.lora.enabled=false")  # sampling only (a --run's own model settings replace these)
    cfg = load_config(DiffusionConfig, args.config, overrides, check=lambda c: check_steer_config(c.steer))
    if args.run:
        cfg.model = run_model_config(args.run)
    if args.resolution:
        cfg.model.resolution = args.resolution
    if args.reward:
        reward_args = parse_overrides(args.reward_arg)
        cfg.steer.rewards = [RewardSpec(name=args.reward, weight=1.0, args=reward_args)]
    elif args.reward_arg:
        raise ConfigError("--reward-arg needs --reward NAME")
    if not cfg.steer.rewards:
        cfg.steer.rewards = cfg.rewards
    return cfg


def cmd_steer(args) -> None:
    from mmrl.diffusion.artifacts import apply_trained
    from mmrl.diffusion.pipeline import load_policy
    from mmrl.diffusion.steering import make_steer_reward, write_steered

    cfg = steer_config(args)
    reward = make_steer_reward(cfg.steer.rewards)
    records = prompt_records(args)
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: give at least 1 image per prompt")
    policy = load_policy(cfg.model)
    if args.run:
        apply_trained(policy, args.run)
    summary = write_steered(policy, records, reward, cfg.steer, args.out, cfg.model.resolution, args.n, args.seed,
                            baseline=args.baseline, progress=not args.quiet)
    fk, n = summary["fk"], cfg.steer.particles
    line = (f"FK steering ({n} particles, {cfg.steer.potential}, lambda {cfg.steer.lmbda:g}): mean reward "
            f"{fk['mean_reward']:.4f} over {len(records)} prompts, {fk['denoiser_calls']} denoiser calls")
    if args.baseline:
        base = summary["best_of_n"]
        line += f"; best-of-{n}: {base['mean_reward']:.4f}, {base['denoiser_calls']} denoiser calls"
    print(f"{line}; images and summary.json in {args.out}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="diffusion_command", required=True)
    p = sub.add_parser("train", help="RL fine-tuning of a diffusion pipeline (default config: "
                                     "configs/diffusion/ALGORITHM/tiny.yaml)")
    p.add_argument("algorithm", help="a diffusion algorithm (mmrl list 'diffusion algorithm'), e.g. ddpo")
    p.add_argument("rest", nargs="*", metavar="[CONFIG] key=value",
                   help="optional YAML config, then overrides such as optim.lr=1e-4 model.lora.enabled=false")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="write images with the deterministic sampler (GenEval's folder layout)")
    p.add_argument("--model", default="tiny-sd", help="diffusers folder or hub id, or tiny-sd / tiny-sd3")
    p.add_argument("--run", help="a diffusion run directory: its model settings and trained weights (final/)")
    add_prompt_arguments(p)
    p.add_argument("--out", required=True, help="output folder (OUT/00000/samples/0000.png ...)")
    p.add_argument("--n", type=int, default=4, help="images per prompt (default 4, as GenEval)")
    p.add_argument("--steps", type=int, default=40, help="denoising steps (default 40)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1: off)")
    p.add_argument("--resolution", type=int, help="image size (default: the model config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("steer", help="FK steering: N particles per image resampled by a reward's potential "
                                     "(GenEval's folder layout, summary.json)")
    p.add_argument("--config", help="a diffusion config whose steer:, model: and rewards: sections give the "
                                    "defaults (the flags override them)")
    p.add_argument("--model", help="diffusers folder or hub id, or tiny-sd / tiny-sd3 (default: the config's, "
                                   "tiny-sd)")
    p.add_argument("--run", help="a diffusion run directory: its model settings and trained weights (final/)")
    add_prompt_arguments(p)
    p.add_argument("--out", required=True, help="output folder (OUT/00000/samples/0000.png ..., OUT/summary.json)")
    p.add_argument("--particles", type=int, help="particles N per image (default 4)")
    p.add_argument("--potential", help="max, add, diff or rt (default max)")
    p.add_argument("--lambda", dest="lmbda", type=float, help="lambda of the potentials exp(lambda*...) (default 10)")
    p.add_argument("--reward", help="an image reward name (mmrl list); default: the config's rewards")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of --reward, value parsed as YAML (repeatable), e.g. target=[0,0,1]")
    p.add_argument("--resample-every", type=int, help="score x0 and resample every K steps (default 5)")
    p.add_argument("--resample-start", type=int, help="first scored step, 0-based (default 0)")
    p.add_argument("--resample-end", type=int, help="last scored step, inclusive (default: the last)")
    p.add_argument("--adaptive", action="store_true",
                   help="at scored steps resample only when the effective sample size is below N/2")
    p.add_argument("--baseline", choices=["best_of_n"],
                   help="also write best-of-N at equal denoiser calls (same seeds) under OUT/best_of_n/")
    p.add_argument("--steps", type=int, help="denoising steps (default 40)")
    p.add_argument("--stochasticity", type=float, help="DDIM eta / flow SDE noise level (default 1.0 / 0.7)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 1: off)")
    p.add_argument("--n", type=int, default=1, help="steered images per prompt (default 1)")
    p.add_argument("--resolution", type=int, help="image size (default: the model config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_steer)
