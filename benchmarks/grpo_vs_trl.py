"""One GRPO workload through mmrl and through TRL's ``GRPOTrainer``, side by side on this machine.

    pip install -e ".[bench]"
    python benchmarks/grpo_vs_trl.py [--workload grounding|reasoning|both] [--steps 4] [--vocab tiny|qwen]
                                     [--before [LABEL=]CHECKOUT ...] [--checkpointing] [--rounds 1]

Both runs use the same tiny ``small`` Qwen2.5-VL checkpoint (``make-tiny``), the same synthetic ScreenSpot-format
screenshots and instructions, the same rewards (GUI-G² Gaussian point + format, mmrl's reward functions),
G completions of each of P prompts per step, the same max new tokens, mu = 1, beta = 0.04 with the k3 KL in the
loss, PPO clip 0.2, token-mean loss aggregation (TRL ``loss_type="dapo"``, mmrl ``loss_agg: token_mean``),
group-normalised advantages, fp32 on CPU, gradient checkpointing off (``--checkpointing``: on, both sides). Each side runs in its own subprocess;
the table gives the median step time over steps 2..N (with ``--rounds R``: every side runs R times, in turn, and
the median of its R runs' medians is given, with each round's ratio, since this machine's speed drifts by tens of
percent between runs), completion tokens per second, the peak resident memory of that process, and the mmrl/TRL
ratios, plus a FLOP floor: the model FLOPs of the tokens a step must
process (each prompt once, each completion once; 2 FLOPs per parameter per token forward, 4 backward),
over a measured fp32 matmul rate; and the FLOPs each side's method runs (TRL: each completion with its own copy
of the prompt), whose ratio is the speed-up that equal efficiency per FLOP would give.

Workloads: grounding-shaped = 448x448 screenshots, G = 8, 4 prompts, 24 new tokens; reasoning-shaped = 224x224,
256 new tokens. ``--vocab qwen`` builds the checkpoint around Qwen's real 151,669-token tokenizer (``make-tiny
--tokenizer qwen``), so the embedding, the output head and the log-softmax have their real size (the tiny
tokenizer has 567 tokens). ``--before [LABEL=]CHECKOUT`` (repeatable) adds a side: mmrl as that other checkout has it (e.g. a
``git worktree`` of an older commit), imported from there, in the table as "mmrl LABEL" (default "before"). Results go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {"grounding": {"side": 448, "new_tokens": 24}, "reasoning": {"side": 224, "new_tokens": 256}}
PROMPTS, GROUP, BETA = 4, 8, 0.04


def overrides(work: Path, side: int, new_tokens: int, steps: int, checkpointing: bool) -> list[str]:
    """The mmrl config of the workload (also what the TRL side reads its data and model from)."""
    pixels = side * side
    return ["task=gui_grounding", f"output_dir={work / 'mmrl_run'}", f"model.path={work / 'model'}", f"model.cache_dir={work / 'cache'}",
            f"model.min_pixels={pixels}", f"model.max_pixels={pixels}", "progress=false", "log_rollouts=false",
            f"data.synthetic.width={side}", f"data.synthetic.height={side}", "data.synthetic.n_train=64",
            "data.synthetic.n_eval=4", "data.synthetic.min_size=40", "data.synthetic.max_size=120", "sft.steps=0",
            f"grpo.steps={steps}", f"grpo.prompts_per_step={PROMPTS}", f"grpo.group_size={GROUP}",
            f"grpo.max_new_tokens={new_tokens}", f"grpo.micro_batch_size={PROMPTS * GROUP}", "grpo.mu=1",
            f"grpo.beta={BETA}", "grpo.kl_estimator=k3", "grpo.loss_agg=token_mean", "grpo.advantage=grpo",
            "grpo.lr=1e-6", "eval.before_and_after=false", f"save_every={steps + 1}", "overwrite=true",
            f"model.gradient_checkpointing={str(checkpointing).lower()}"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mmrl(work: Path, side: int, new_tokens: int, steps: int, checkpointing: bool) -> dict:
    from mmrl.config import TrainConfig, load_config
    from mmrl.trainer import train

    train(load_config(TrainConfig, None, overrides(work, side, new_tokens, steps, checkpointing)))
    rows = [json.loads(x) for x in (work / "mmrl_run" / "metrics.jsonl").read_text().splitlines()]
    return {"step_seconds": [r["step_seconds"] for r in rows],
            "completion_tokens": [r["completion_len/mean"] * PROMPTS * GROUP for r in rows], "peak_mib": peak_rss_mib()}


def run_trl(work: Path, side: int, new_tokens: int, steps: int, checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mmrl.config import TrainConfig, load_config
    from mmrl.data import load_context, media_cache
    from mmrl.task import opened
    from mmrl.types import IMAGE_MARK
    from rewards import gui

    cfg = load_config(TrainConfig, None, overrides(work, side, new_tokens, steps, checkpointing))
    with opened("gui_grounding", cfg.data) as (task, data_cfg):
        samples = task.load("train", data_cfg, load_context(cfg.model, "qwen2_5_vl"))
    images = media_cache(cfg.model, "qwen2_5_vl")
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": s.prompt.replace(IMAGE_MARK, "")}]}],
             "image": images.images(s)[0], **s.fields} for s in samples]

    def texts(completions):
        return [c[0]["content"] if isinstance(c, list) else c for c in completions]

    def point(completions, **fields):
        return gui.point_reward(texts(completions), **fields)

    def fmt(completions, **fields):
        return gui.format_reward(texts(completions), **fields)

    times, tokens = [], []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "step_time" in logs:
                times.append(float(logs["step_time"]))
                tokens.append(float(logs["completions/mean_length"]) * PROMPTS * GROUP)

    processor = AutoProcessor.from_pretrained(work / "model", min_pixels=side * side, max_pixels=side * side,
                                              padding_side="left")
    args = GRPOConfig(output_dir=str(work / "trl_run"), per_device_train_batch_size=PROMPTS * GROUP,
                      num_generations=GROUP, max_completion_length=new_tokens, beta=BETA, num_iterations=1,
                      loss_type="dapo", scale_rewards="group", epsilon=0.2, learning_rate=1e-6, max_steps=steps,
                      gradient_accumulation_steps=1, gradient_checkpointing=checkpointing, use_cpu=True, bf16=False,
                      logging_steps=1, report_to=[], save_strategy="no", temperature=1.0, seed=0)
    trainer = GRPOTrainer(model=AutoModelForImageTextToText.from_pretrained(work / "model"), reward_funcs=[point, fmt],
                          args=args, train_dataset=Dataset.from_list(rows), processing_class=processor,
                          callbacks=[Record()])
    trainer.train()
    return {"step_seconds": times, "completion_tokens": tokens, "peak_mib": peak_rss_mib()}


def matmul_flops_per_second() -> float:
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    return 2 * 1024**3 * n / (time.perf_counter() - start)


def parameter_counts(work: Path) -> tuple[int, int, int]:
    """Parameters of the workload's checkpoint: the vision tower, the text body (embeddings and output head
    excluded), the output head."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(work / "model")
    count = lambda keep: sum(p.numel() for n, p in model.named_parameters() if keep(n))  # noqa: E731
    body = count(lambda n: "visual" not in n and "embed_tokens" not in n and "lm_head" not in n)
    return count(lambda n: "visual" in n), body, model.get_output_embeddings().weight.numel()


def step_flops(params: tuple[int, int, int], side: int, completion_tokens: float, prompt_runs: int) -> float:
    """Parameter FLOPs of a step that runs each prompt ``prompt_runs`` times and each completion token once
    through generation (forward), the reference (forward) and the policy (forward + backward): 2 + 2 + 6 = 10
    FLOPs per parameter per token. Vision parameters see the (side/14)^2 patches; the text body (embeddings and
    output head excluded) sees the (side/28)^2 merged image tokens plus ~20 prompt text tokens, and the completion
    tokens; the output head sees only the completion tokens (no logits are needed for prompt positions).
    Attention-score FLOPs are left out (small at these lengths). With ``prompt_runs`` = the number of prompts
    (each prompt once, as the shared prefix runs it) this is the floor of any implementation; TRL runs each
    completion's prompt with it (prompts x G). ``params``: ``parameter_counts``."""
    vision, body, head = params
    prompt_tokens = (side // 28) ** 2 + 20
    return 10 * (prompt_runs * (vision * (side // 14) ** 2 + body * prompt_tokens) + (body + head) * completion_tokens)


def compare(name: str, steps: int, vocab: str, before: dict[str, str], checkpointing: bool,
            rounds: int) -> None:
    spec = WORKLOADS[name]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from mmrl.models.tiny import make_tiny

        make_tiny(work / "model", family="qwen2_5_vl", size="small", tokenizer="qwen" if vocab == "qwen" else None)
        sides = {"mmrl": None, "trl": None, **{f"mmrl {label}": checkout for label, checkout in before.items()}}
        results = {side: [] for side in sides}
        for _ in range(rounds):
            for side, checkout in sides.items():
                cmd = [sys.executable, __file__, "--run", "trl" if side == "trl" else "mmrl", "--work", str(work),
                       "--workload", name, "--steps", str(steps), *(["--checkpointing"] if checkpointing else [])]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([checkout, str(ROOT)])} if checkout else None
                out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
                if out.returncode:
                    sys.exit(f"{side} run failed:\n{out.stderr[-3000:]}")
                results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
        round_steps = {side: [statistics.median(r["step_seconds"][1:]) for r in runs] for side, runs in results.items()}
        rows = {}
        for side, runs in results.items():
            step = statistics.median(round_steps[side])
            tok = statistics.median(t for r in runs for t in r["completion_tokens"][1:])
            rows[side] = (step, tok / step, max(r["peak_mib"] for r in runs), tok)
        rate = matmul_flops_per_second()
        params = parameter_counts(work)
        floors = {side: step_flops(params, spec["side"], row[3], PROMPTS) / rate for side, row in rows.items()}
        runs = {side: PROMPTS * GROUP if side == "trl" else PROMPTS for side in rows}
        flops = {side: step_flops(params, spec["side"], row[3], runs[side]) for side, row in rows.items()}
    print(f"\n### {name}: {spec['side']}x{spec['side']}, {PROMPTS} prompts x G={GROUP}, {spec['new_tokens']} new "
          f"tokens, mu=1, beta={BETA}, {vocab} vocabulary, gradient checkpointing {'on' if checkpointing else 'off'}; "
          f"median of steps 2..{steps}" + (f", median of {rounds} rounds" if rounds > 1 else "") + "\n")
    print(f"fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s\n")
    print("| run | step (s) | completion tokens/step | completion tokens/s | peak RSS (MiB) | FLOP floor (s) "
          "| floor / step | step GFLOP (as run) |")
    print("|---|---|---|---|---|---|---|---|")
    for side, (step, tps, mem, tok) in rows.items():
        print(f"| {side} | {step:.2f} | {tok:.0f} | {tps:.1f} | {mem:.0f} | {floors[side]:.3f} "
              f"| {floors[side] / step:.1%} | {flops[side] / 1e9:.0f} |")
    m, t = rows["mmrl"], rows["trl"]
    print(f"| mmrl/TRL | {m[0] / t[0]:.3f} (throughput {t[0] / m[0]:.1f}x) | | {m[1] / t[1]:.1f}x | {m[2] / t[2]:.2f} "
          f"| | | TRL runs {flops['trl'] / flops['mmrl']:.2f}x the FLOPs |")
    if rounds > 1:
        each = ", ".join(f"{t / m:.1f}x" for m, t in zip(round_steps["mmrl"], round_steps["trl"]))
        print(f"| each round's TRL/mmrl step time | {each} | | | | | | |")
    for label in before:
        b = rows[f"mmrl {label}"]
        print(f"| mmrl/mmrl {label} | {m[0] / b[0]:.3f} (throughput {b[0] / m[0]:.1f}x) | | {m[1] / b[1]:.1f}x "
              f"| {m[2] / b[2]:.2f} | | | |")


def main() -> None:
    p = argparse.ArgumentParser(description="mmrl vs TRL GRPOTrainer on identical workloads")
    p.add_argument("--workload", default="both", choices=[*WORKLOADS, "both"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--vocab", default="tiny", choices=["tiny", "qwen"],
                   help="the checkpoint's vocabulary: the tiny trained one (567) or Qwen's real one (151,669)")
    p.add_argument("--before", metavar="[LABEL=]CHECKOUT", action="append", default=[],
                   help="also run mmrl as imported from this other checkout (repeatable)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on, both sides")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every side this many times, in turn (the machine's speed drifts between runs)")
    p.add_argument("--run", choices=["mmrl", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        spec = WORKLOADS[args.workload]
        fn = run_mmrl if args.run == "mmrl" else run_trl
        print(json.dumps(fn(Path(args.work), spec["side"], spec["new_tokens"], args.steps, args.checkpointing)))
        return
    for name in WORKLOADS if args.workload == "both" else [args.workload]:
        before = dict(b.split("=", 1) if "=" in b else ("before", b) for b in args.before)
        compare(name, args.steps, args.vocab, before, args.checkpointing, args.rounds)


if __name__ == "__main__":
    main()
