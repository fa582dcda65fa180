"""End-to-end diffusion training on the tiny pipelines: run directory, PPO ratio, resume, CLI, bad input."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.cli import main
from mmrl.config import load_config
from mmrl.diffusion.algorithms.base import Context, expand_prompts, sample_and_score
from mmrl.diffusion.algorithms.policy_gradient import step_logprob
from mmrl.diffusion.artifacts import FINAL_WEIGHTS
from mmrl.diffusion.config import DiffusionConfig
from mmrl.diffusion.image_rewards import WeightedImageReward
from mmrl.diffusion.pipeline import load_policy
from mmrl.diffusion.trainer import train
from mmrl.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.max_sequence_length=8", "optim.prompts_per_step=2", "optim.images_per_prompt=2", "optim.micro_batch_size=4", "sampling.steps=3",
         "progress=false"]
ALGORITHMS = {"alignprop": ("tiny-sd", "color_target"), "ddpo": ("tiny-sd", "jpeg_compressibility"),
              "flow_grpo": ("tiny-sd3", "jpeg_compressibility"), "awm": ("tiny-sd3", "brightness")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def config(cache, out, algorithm, *overrides):
    path, reward = ALGORITHMS[algorithm]
    return load_config(DiffusionConfig, None, [f"algorithm={algorithm}", f"model.path={path}",
                                               f"model.cache_dir={cache}", f"output_dir={out}",
                                               f"rewards=[{{name: {reward}}}]", *SMALL, *overrides])


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_each_algorithm_writes_a_complete_run(cache, tmp_path, algorithm, recording_tracker):
    extra = ["algorithm_args.beta=0.1"] if algorithm == "flow_grpo" else []
    summary = train(config(cache, tmp_path, algorithm, "optim.steps=2", *extra), trackers=[recording_tracker])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert recording_tracker.rows == rows and recording_tracker.finished  # trackers get what metrics.jsonl has
    assert recording_tracker.config["algorithm"] == algorithm
    assert list((tmp_path / "tb" / tmp_path.name).glob("events.out.tfevents.*"))  # the default tracker
    assert all(torch.isfinite(torch.tensor([r["reward/mean"], r["loss"], r["grad_norm"]])).all() for r in rows)
    if algorithm == "flow_grpo":
        assert all(r["kl"] >= 0 for r in rows)
    groups = [json.loads(line) for line in (tmp_path / "rollouts" / "step_000002.jsonl").read_text().splitlines()]
    assert len(groups) == 2 and all(len(g["images"]) == 2 and len(g["total"]) == 2 for g in groups)
    assert all((tmp_path / p).is_file() for g in groups for p in g["images"])
    assert (groups[0]["advantages"] is None) == (algorithm == "alignprop")
    assert (tmp_path / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()
    assert load_file(str(tmp_path / "final" / FINAL_WEIGHTS))
    assert summary["reward"]["first"] == pytest.approx(sum(r["reward/mean"] for r in rows) / 2)


def test_without_trackers_only_metrics_jsonl_logs(cache, tmp_path):
    train(config(cache, tmp_path, "ddpo", "optim.steps=1", "log_with=[]"))
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize("path,eta", [("tiny-sd", 1.0), ("tiny-sd3", 0.7)])
def test_ppo_ratio_is_one_before_the_first_update(cache, path, eta):
    """Re-scoring stored steps under the unchanged policy, shuffled into other micro-batches and with one step
    index per row, gives the sampling log-probs back: ratio 1 up to float32 rounding."""
    cfg = load_config(DiffusionConfig, None, [f"model.path={path}", f"model.cache_dir={cache}",
                                              "optim.micro_batch_size=4", "sampling.steps=4"])
    policy = load_policy(cfg.model)
    ctx = Context(cfg, policy, WeightedImageReward([("jpeg_compressibility", 1.0, {})]), None, None)
    g = torch.Generator().manual_seed(0)
    batch = sample_and_score(ctx, expand_prompts(ctx, ["a red apple", "a dog"]), g, eta)
    n, steps = batch.trajectory.log_probs.shape
    rows, idx = torch.randperm(n, generator=g)[:5], torch.randint(steps, (5,), generator=g)
    step = step_logprob(ctx, batch, rows, idx, policy.sampler(4, eta))
    ratio = torch.exp(step.log_prob - batch.trajectory.log_probs[rows, idx])
    assert (ratio - 1).abs().max() < 1e-6
    assert step.log_prob.requires_grad


def test_policy_gradient_trains_only_the_stochastic_window(cache, tmp_path, monkeypatch):
    """With ``sampling.sde_window`` [1, 3) of 4 steps, DDPO and Flow-GRPO re-score steps 1 and 2 only (the
    deterministic steps are no actions), each of them for every image (``timestep_fraction`` 1)."""
    from mmrl.diffusion.algorithms import policy_gradient

    drawn = []

    def recording(ctx, batch, rows, idx, sampler, net=None):
        drawn.extend(idx.tolist())
        return step_logprob(ctx, batch, rows, idx, sampler, net)

    monkeypatch.setattr(policy_gradient, "step_logprob", recording)
    train(config(cache, tmp_path, "ddpo", "optim.steps=1", "sampling.steps=4", "sampling.sde_window=[1, 3]"))
    assert sorted(drawn) == [1] * 4 + [2] * 4  # 2 prompts x 2 images, two window steps each
    with pytest.raises(ConfigError, match=r"sampling.sde_window.*\[2, 9\].*sampling.steps \(4\)"):
        train(config(cache, tmp_path / "bad", "ddpo", "sampling.steps=4", "sampling.sde_window=[2, 9]"))


@pytest.mark.parametrize("shared", [False, True])
def test_shared_noise_starts_every_image_of_a_group_from_the_same_latent(cache, shared):
    cfg = load_config(DiffusionConfig, None, ["model.path=tiny-sd", f"model.cache_dir={cache}", "sampling.steps=2",
                                              "optim.images_per_prompt=3", "optim.micro_batch_size=2",
                                              f"sampling.shared_noise={str(shared).lower()}"])
    ctx = Context(cfg, load_policy(cfg.model), WeightedImageReward([("brightness", 1.0, {})]), None, None)
    batch = sample_and_score(ctx, expand_prompts(ctx, ["a red apple", "a dog"]), torch.Generator().manual_seed(0),
                             1.0)
    start = batch.trajectory.latents[:, 0]
    same = [torch.equal(start[i], start[j]) for i in range(6) for j in range(i + 1, 6)]
    pairs_in_groups = [i // 3 == j // 3 for i in range(6) for j in range(i + 1, 6)]
    assert same == (pairs_in_groups if shared else [False] * 15)  # micro-batches of 2 cut across the groups of 3
    assert not torch.equal(batch.trajectory.final[0], batch.trajectory.final[1])  # the sampler's noise differs


def test_resume_after_a_kill_ends_with_the_same_weights(cache, tmp_path):
    full = train(config(cache, tmp_path / "full", "ddpo", "optim.steps=4", "save_every=2"))

    def die(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(cache, tmp_path / "cut", "ddpo", "optim.steps=4", "save_every=2"), on_step=die)
    resumed = train(config(cache, tmp_path / "cut", "ddpo", "optim.steps=4", "save_every=2", "resume=true"))
    a, b = (load_file(str(tmp_path / d / "final" / FINAL_WEIGHTS)) for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed == full
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_training_changes_only_the_lora_adapters(cache, tmp_path):
    cfg = config(cache, tmp_path, "alignprop", "optim.steps=1")
    policy = load_policy(cfg.model)
    names = [n for n, p in policy.denoiser.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    train(cfg)
    trained = load_file(str(tmp_path / "final" / FINAL_WEIGHTS))
    assert sorted(trained) == sorted(names)


def test_cli_train_and_sample(cache, tmp_path, capsys):
    tiny = ROOT / "configs" / "diffusion" / "ddpo" / "tiny.yaml"
    main(["diffusion", "train", "ddpo", str(tiny), f"model.cache_dir={cache}", f"output_dir={tmp_path / 'run'}",
          "optim.steps=1", *SMALL])
    assert "mean reward" in capsys.readouterr().out
    main(["diffusion", "sample", "--run", str(tmp_path / "run"), "--prompt", "a red apple", "--n", "2",
          "--steps", "3", "--out", str(tmp_path / "samples"), "--quiet"])
    record = json.loads((tmp_path / "samples" / "00000" / "metadata.jsonl").read_text())
    assert record == {"prompt": "a red apple"}
    assert sorted(p.name for p in (tmp_path / "samples" / "00000" / "samples").iterdir()) == ["0000.png", "0001.png"]


def test_bad_input_gives_clear_errors(cache, tmp_path):
    with pytest.raises(ConfigError, match="unknown image reward 'sharpness'.*jpeg_compressibility"):
        train(config(cache, tmp_path, "ddpo", "rewards=[{name: sharpness}]"))
    with pytest.raises(DataError, match="prompt file not found: .*nope.txt"):
        train(config(cache, tmp_path, "ddpo", f"prompts.file={tmp_path / 'nope.txt'}"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(DataError, match="bad.jsonl:2: malformed JSON"):
        train(config(cache, tmp_path, "ddpo", f"prompts.file={bad}"))
    folder = tmp_path / "not_a_pipeline"
    folder.mkdir()
    with pytest.raises(ConfigError, match="not a diffusers pipeline folder"):
        train(config(cache, tmp_path / "r1", "ddpo", f"model.path={folder}"))
    with pytest.raises(ConfigError, match="alignprop backpropagates through the reward"):
        train(config(cache, tmp_path / "r3", "alignprop", "rewards=[{name: jpeg_compressibility}]"))
    with pytest.raises(ConfigError, match="unknown diffusion algorithm 'ppo'; valid: alignprop, awm, ddpo"):
        train(config(cache, tmp_path / "r4", "ddpo", "algorithm=ppo"))
    with pytest.raises(ConfigError, match="unknown config key 'algorithm_args.beta'.*stat_buffer, stat_min_count"):
        train(config(cache, tmp_path / "r6", "ddpo", "algorithm_args.beta=0.1"))
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        train(config(cache, tmp_path / "r5", "ddpo", "model.lora.enabled=true", "model.lora.target_modules=[nope]"))
    with pytest.raises(ConfigError, match="unknown config key 'optim.stepz'"):
        config(cache, tmp_path, "ddpo", "optim.stepz=3")
