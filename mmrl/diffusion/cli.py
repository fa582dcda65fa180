"""``mmrl diffusion train ALGORITHM [CONFIG] [key=value ...]`` and ``mmrl diffusion sample``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmrl.errors import ConfigError


def split_config(args: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] key=value ...``: a first argument without ``=`` is the config file."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(args) -> None:
    from mmrl.config import default_config, load_config
    from mmrl.diffusion.config import DiffusionConfig
    from mmrl.diffusion.trainer import train

    config, overrides = split_config(args.rest)
    path = Path(config) if config else default_config(args.algorithm, diffusion=True)
    cfg = load_config(DiffusionConfig, path, [*overrides, f"algorithm={args.algorithm}"])
    summary = train(cfg)
    reward = summary["reward"]
    print(f"{cfg.algorithm}: mean reward {reward['first']:.4f} (first {reward['window']} steps) -> "
          f"{reward['last']:.4f} (last {reward['window']}); run in {cfg.output_dir}")


def cmd_sample(args) -> None:
    from mmrl.config import build
    from mmrl.diffusion.artifacts import apply_trained
    from mmrl.diffusion.config import DiffusionLoraConfig, DiffusionModelConfig
    from mmrl.diffusion.pipeline import load_policy
    from mmrl.diffusion.prompts import read_prompt_file
    from mmrl.diffusion.sample import write_samples

    if args.run:
        config_file = Path(args.run) / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"--run {args.run}: no config.json (not a diffusion run directory)")
        model_cfg = build(DiffusionModelConfig, json.loads(config_file.read_text())["model"], prefix="model.")
    else:
        model_cfg = DiffusionModelConfig(path=args.model, lora=DiffusionLoraConfig(enabled=False))
    if args.resolution:
        model_cfg.resolution = args.resolution
    records = [{"prompt": p} for p in args.prompt] + (read_prompt_file(args.prompts) if args.prompts else [])
    if not records:
        raise ConfigError("give --prompt TEXT (repeatable) or --prompts FILE")
    policy = load_policy(model_cfg)
    if args.run:
        apply_trained(policy, args.run)
    out = write_samples(policy, records, args.out, args.n, args.steps, model_cfg.resolution, args.guidance,
                        args.seed, progress=not args.quiet)
    print(f"wrote {args.n} images for each of {len(records)} prompts to {out}")


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
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="prompt file: text (one per line) or JSON lines with a 'prompt' field")
    p.add_argument("--out", required=True, help="output folder (OUT/00000/samples/0000.png ...)")
    p.add_argument("--n", type=int, default=4, help="images per prompt (default 4, as GenEval)")
    p.add_argument("--steps", type=int, default=40, help="denoising steps (default 40)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1: off)")
    p.add_argument("--resolution", type=int, help="image size (default: the model config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)
