"""FK steering: potentials, weights, ESS and resampling on hand numbers; the particle loop on a toy denoiser; the
tiny SD 1.x and SD3 pipelines (N = 1 is plain sampling, a colour reward is steered towards); the CLI."""
import json
import math

import pytest
import torch
from diffusers import DDIMScheduler

from mmrl.cli import main
from mmrl.config import load_config
from mmrl.diffusion.config import (
    DiffusionConfig,
    DiffusionLoraConfig,
    DiffusionModelConfig,
    RewardSpec,
    SteerConfig,
)
from mmrl.diffusion.pipeline import load_policy
from mmrl.diffusion.sample import sample_images
from mmrl.diffusion.samplers import DDIMSampler, rollout
from mmrl.diffusion.steering import (
    POTENTIALS,
    add_potential,
    check_steer_config,
    diff_potential,
    effective_sample_size,
    final_log_potential,
    fk_sample,
    get_potential,
    make_steer_reward,
    max_potential,
    multinomial_resample,
    normalized_weights,
    resample_mask,
    resampling_steps,
    rt_potential,
    steer_images,
)
from mmrl.diffusion.tiny import make_tiny_diffusion
from mmrl.errors import ConfigError

R = 32
PROMPTS = ["a red apple", "a blue car", "a dog", "a cat"]


# -- pure functions on hand numbers -----------------------------------------------------------------------------
def test_potentials_hand_numbers():
    r1, r2 = torch.tensor([[0.1, 0.5, 0.2]]), torch.tensor([[0.3, 0.2, 0.2]])
    # first scored step (no earlier reward): every potential is λ·r_t = [1, 5, 2]
    for fn in (max_potential, add_potential, diff_potential, rt_potential):
        log_g, _ = fn(r1, None, 10.0)
        torch.testing.assert_close(log_g, torch.tensor([[1.0, 5.0, 2.0]]))
    expected = {max_potential: [3.0, 5.0, 2.0],   # λ·max(r2, r1)
                add_potential: [4.0, 7.0, 4.0],   # λ·(r1 + r2)
                diff_potential: [2.0, -3.0, 0.0],  # λ·(r2 − r1)
                rt_potential: [3.0, 2.0, 2.0]}     # λ·r2
    for fn, numbers in expected.items():
        _, state = fn(r1, None, 10.0)
        log_g, _ = fn(r2, state, 10.0)
        torch.testing.assert_close(log_g, torch.tensor([numbers]), msg=fn.__name__)
    # the running max and the running sum are what MAX and ADD carry
    _, state = max_potential(r2, max_potential(r1, None, 10.0)[1], 10.0)
    torch.testing.assert_close(state, torch.tensor([[0.3, 0.5, 0.2]]))
    _, state = add_potential(r2, add_potential(r1, None, 10.0)[1], 10.0)
    torch.testing.assert_close(state, torch.tensor([[0.4, 0.7, 0.4]]))
    # MAX ignores nothing below 0 (the reference's reward_min_value = 0 would flatten these to exp(0))
    log_g, _ = max_potential(torch.tensor([[-0.3, -0.1]]), None, 10.0)
    torch.testing.assert_close(log_g, torch.tensor([[-3.0, -1.0]]))


def test_weights_and_ess_hand_numbers():
    # rewards [0.1, 0.5, 0.2], λ = 10: w = (e^1, e^5, e^2) / (e^1 + e^5 + e^2), ESS = 1 / Σ w²
    log_w, _ = rt_potential(torch.tensor([[0.1, 0.5, 0.2]]), None, 10.0)
    w = normalized_weights(log_w)
    torch.testing.assert_close(w, torch.tensor([[0.0171478, 0.9362396, 0.0466126]]), atol=1e-7, rtol=0)
    assert effective_sample_size(log_w).item() == pytest.approx(1.1376418, abs=1e-6)
    # log space: λ·r = 1000 and 1001 would overflow exp() in float32; the softmax gives (1, e)/(1 + e)
    big = normalized_weights(torch.tensor([[1000.0, 1001.0]]))
    torch.testing.assert_close(big, torch.tensor([[1 / (1 + math.e), math.e / (1 + math.e)]]))
    assert effective_sample_size(torch.zeros(2, 4)).tolist() == [4.0, 4.0]
    # NaN counts as weight 0; a row of -inf is uniform
    torch.testing.assert_close(normalized_weights(torch.tensor([[float("nan"), 0.0], [-math.inf, -math.inf]])),
                               torch.tensor([[0.0, 1.0], [0.5, 0.5]]))


def test_final_potential_divides_by_the_earlier_ones_except_diff():
    log_g, before = torch.tensor([[5.0, 2.0]]), torch.tensor([[3.0, 1.0]])
    for name in ("max", "add", "rt"):
        torch.testing.assert_close(final_log_potential(POTENTIALS[name], log_g, before), torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(final_log_potential(POTENTIALS["diff"], log_g, before), log_g)


def test_multinomial_resampling_is_seeded_and_follows_the_weights():
    log_w = torch.log(torch.tensor([0.2, 0.3, 0.5])).expand(20000, 3)
    a = multinomial_resample(log_w, torch.Generator().manual_seed(0))
    b = multinomial_resample(log_w, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (20000, 3)
    freq = torch.bincount(a.reshape(-1), minlength=3).float() / a.numel()
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.01, rtol=0)
    one = multinomial_resample(torch.tensor([[-math.inf, 0.0, -math.inf]]), torch.Generator().manual_seed(1))
    assert one.tolist() == [[1, 1, 1]]


def test_schedule_and_adaptive_trigger():
    assert resampling_steps(10, every=3, start=1) == [1, 4, 7]
    assert resampling_steps(10, every=2, start=0, end=5) == [0, 2, 4]
    assert resampling_steps(10, every=1, start=7, end=20) == [7, 8]  # the last step (9) is the final potential's
    assert resampling_steps(1) == []
    for bad in [{"every": 0}, {"start": -1}, {"start": 5, "end": 4}]:
        with pytest.raises(ConfigError, match="invalid FK schedule"):
            resampling_steps(10, **bad)
    # ESS < N/2 triggers: equal weights (ESS 4) do not, one particle holding everything (ESS 1) does;
    # ESS exactly N/2 = 2 (two equal particles) does not
    log_w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf],
                          [0.0, 0.0, -math.inf, -math.inf]])
    assert resample_mask(log_w, adaptive=True).tolist() == [False, True, False]
    assert resample_mask(log_w, adaptive=False).tolist() == [True, True, True]


# -- the particle loop on a toy denoiser ------------------------------------------------------------------------
def toy_sampler(steps=4, eta=1.0):
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return DDIMSampler(scheduler, steps, eta)


def toy_denoiser(x, t):
    return 0.3 * torch.tanh(x) + (t.float() / 1000.0).reshape(-1, *[1] * (x.ndim - 1))


def mean_score(x):
    return x.mean(dim=(1, 2, 3))


def test_resampling_with_a_decisive_potential_copies_the_best_particle():
    """λ huge at step 0 with a deterministic sampler (η = 0): every particle of an image becomes the copy of the
    one whose x̂0 scored highest, so all final particles equal that particle's own unsteered trajectory."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2 * 3, 4, 4, 4, generator=g)
    free = fk_sample(toy_denoiser, toy_sampler(eta=0.0), latents, mean_score, particles=3)
    steered = fk_sample(toy_denoiser, toy_sampler(eta=0.0), latents, mean_score, particles=3, lmbda=1e6,
                        schedule=[0], resample_generator=torch.Generator().manual_seed(1))
    sampler = toy_sampler(eta=0.0)
    x0 = sampler.step(0, toy_denoiser(latents, sampler.model_time(0).expand(6)), latents).pred_original_sample
    winners = mean_score(x0).reshape(2, 3).argmax(dim=1)
    for image in range(2):
        for k in range(3):
            assert torch.equal(steered.latents[image * 3 + k], free.latents[image * 3 + winners[image]])
    assert steered.history == [{"step": 0, "ess": pytest.approx([1.0, 1.0]), "resampled": [True, True]}]
    assert steered.denoiser_calls == free.denoiser_calls == 6 * 4


def test_adaptive_keeps_particles_while_the_weights_are_even():
    latents = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    flat = fk_sample(toy_denoiser, toy_sampler(), latents, mean_score, particles=4, lmbda=0.0, schedule=[0, 1, 2],
                     adaptive=True, generator=torch.Generator().manual_seed(2))
    assert [h["resampled"] for h in flat.history] == [[False]] * 3
    assert all(h["ess"] == pytest.approx([4.0]) for h in flat.history)
    sharp = fk_sample(toy_denoiser, toy_sampler(), latents, mean_score, particles=4, lmbda=1e6, schedule=[0, 1, 2],
                      adaptive=True, generator=torch.Generator().manual_seed(2))
    assert sharp.history[0]["resampled"] == [True]


def test_adaptive_carries_the_weights_of_steps_it_did_not_resample():
    """RT with fixed rewards (0, 0.05, 0.1, 0.15), λ = 10: log-weights accumulate λ·r per scored step while
    ESS ≥ N/2 = 2: ESS of (0, .5, 1, 1.5) is 3.1096, of (0, 1, 2, 3) 2.0861, of (0, 1.5, 3, 4.5) 1.5666 < 2."""
    fixed = torch.tensor([0.0, 0.05, 0.1, 0.15])
    result = fk_sample(toy_denoiser, toy_sampler(steps=5), torch.zeros(4, 4, 4, 4), lambda x: fixed, particles=4,
                       potential="rt", schedule=[0, 1, 2], adaptive=True,
                       resample_generator=torch.Generator().manual_seed(0))
    assert [h["resampled"] for h in result.history] == [[False], [False], [True]]
    assert [h["ess"][0] for h in result.history] == pytest.approx([3.1095799, 2.0861108, 1.5666479])


def test_bad_particle_counts_and_potentials():
    latents = torch.zeros(6, 4, 4, 4)
    for n in (0, 4):
        with pytest.raises(ConfigError, match="particles"):
            fk_sample(toy_denoiser, toy_sampler(), latents, mean_score, particles=n)
    with pytest.raises(ConfigError, match="unknown FK potential 'best'; valid: add, diff, max, rt"):
        get_potential("best")
    with pytest.raises(ConfigError, match="steer.particles"):
        check_steer_config(SteerConfig(particles=0))
    with pytest.raises(ConfigError, match="'steer.potential': unknown FK potential 'sum'"):
        check_steer_config(SteerConfig(potential="sum"))
    with pytest.raises(ConfigError, match="unknown image reward 'shiny'"):
        make_steer_reward([RewardSpec(name="shiny")])
    with pytest.raises(ConfigError, match="steer.particlez"):
        load_config(DiffusionConfig, None, ["steer.particlez=3"])
    assert load_config(DiffusionConfig, None, ["steer.lmbda=5"]).steer == SteerConfig(lmbda=5.0)


# -- tiny pipelines ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-steer")
    return {kind: make_tiny_diffusion(root / kind, kind=kind, seed=0, resolution=R, progress=False)
            for kind in ("sd", "sd3")}


@pytest.fixture(scope="module")
def policies(tiny):
    torch.set_num_threads(1)
    return {kind: load_policy(DiffusionModelConfig(path=str(path), max_sequence_length=8,
                                                   lora=DiffusionLoraConfig(enabled=False)), torch.device("cpu"))
            for kind, path in tiny.items()}


def steer(policy, reward, cfg, seed=0, baseline=False):
    return steer_images(policy, PROMPTS, reward, cfg, R, torch.Generator().manual_seed(seed),
                        torch.Generator().manual_seed(seed + 1), steer=not baseline)


@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_one_particle_is_plain_sampling(policies, kind):
    policy = policies[kind]
    reward = make_steer_reward([RewardSpec(name="brightness")])
    cfg = SteerConfig(particles=1, steps=4, resample_every=1)
    one = steer(policy, reward, cfg)
    # the stochastic sampler (DDIM η = 1 / flow SDE a = 0.7) with the same generator, no steering
    g = torch.Generator().manual_seed(0)
    a = 1.0 if kind == "sd" else 0.7
    denoise = policy.denoiser_fn(policy.encode(PROMPTS), 1.0)
    plain = policy.decode(rollout(denoise, policy.sampler(4, a), policy.noise(4, R, g), g).final)
    assert torch.equal(one.images, plain)
    assert len(one.particles.history) == 3  # it did score (and "resample") steps 0, 1, 2
    # the deterministic sampler: N = 1 with stochasticity 0 is `mmrl diffusion sample`'s sample_images
    cfg = SteerConfig(particles=1, steps=4, resample_every=1, stochasticity=0.0)
    det = sample_images(policy, PROMPTS, 4, R, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(steer(policy, reward, cfg).images, det)


def test_seeded_runs_repeat_and_best_of_n_keeps_the_max(policies):
    policy = policies["sd"]
    reward = make_steer_reward([RewardSpec(name="brightness")])
    cfg = SteerConfig(particles=3, steps=4, resample_every=1)
    a, b = steer(policy, reward, cfg), steer(policy, reward, cfg)
    assert torch.equal(a.images, b.images) and a.particles.history == b.particles.history
    assert not torch.equal(steer(policy, reward, cfg, seed=5).images, a.images)
    bon = steer(policy, reward, cfg, baseline=True)
    assert bon.particles.history == []
    torch.testing.assert_close(bon.rewards, bon.particles.rewards.max(dim=1).values)
    best = bon.particles.rewards.argmax(dim=1)
    torch.testing.assert_close(reward(bon.images, PROMPTS), bon.particles.rewards[torch.arange(4), best])
    # equal compute: 4 prompts x 3 particles x 4 steps denoiser calls each
    assert bon.particles.denoiser_calls == a.particles.denoiser_calls == 4 * 3 * 4


# Measured on these seeds (4 prompts, 8 particles, 6 steps, scored every 2 steps, MAX, λ = 10, color_target
# weighted 100): mean final reward of the returned images, FK / best-of-8 / plain sampling (the mean over the 32
# independent samples FK starts from):
#   sd,  red  target: FK −22.65, best-of-8 −22.92, plain −23.62
#   sd3, blue target: FK −24.44, best-of-8 −24.59, plain −25.02
COLOUR = {"sd": ([1.0, 0.0, 0.0], -22.65, -22.92, -23.62), "sd3": ([0.0, 0.0, 1.0], -24.44, -24.59, -25.02)}


@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_steering_towards_a_colour_beats_plain_sampling(policies, kind):
    target, fk_mean, bon_mean, plain_mean = COLOUR[kind]
    reward = make_steer_reward([RewardSpec(name="color_target", weight=100.0, args={"target": target})])
    cfg = SteerConfig(particles=8, steps=6, resample_every=2)
    fk = steer(policies[kind], reward, cfg)
    bon = steer(policies[kind], reward, cfg, baseline=True)
    plain = bon.particles.rewards.mean().item()
    assert fk.rewards.mean().item() == pytest.approx(fk_mean, abs=0.02)
    assert bon.rewards.mean().item() == pytest.approx(bon_mean, abs=0.02)
    assert plain == pytest.approx(plain_mean, abs=0.02)
    assert fk.rewards.mean() > bon.rewards.mean() > plain
    # resampling moved the whole population, not only its best member (population means: sd −22.76 vs −23.62,
    # sd3 −24.88 vs −25.02)
    assert fk.particles.rewards.mean() > bon.particles.rewards.mean() + 0.1


# -- the command ------------------------------------------------------------------------------------------------
def test_cli_writes_the_layout_and_the_summary(tiny, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "tag": "colors"}) + "\n" for p in PROMPTS[:2]))
    out = tmp_path / "out"
    main(["diffusion", "steer", "--model", str(tiny["sd"]), "--prompts", str(prompts), "--particles", "3",
          "--potential", "diff", "--lambda", "10", "--reward", "color_target", "--reward-arg", "target=[0,0,1]",
          "--resample-every", "2", "--steps", "4", "--n", "2", "--baseline", "best_of_n", "--out", str(out),
          "--quiet"])
    assert "best-of-3" in capsys.readouterr().out
    for root in (out, out / "best_of_n"):
        for i, p in enumerate(PROMPTS[:2]):
            folder = root / f"{i:05d}"
            assert json.loads((folder / "metadata.jsonl").read_text()) == {"prompt": p, "tag": "colors"}
            assert sorted(f.name for f in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["particles"] == 3 and summary["potential"] == "diff" and summary["scored_steps"] == [0, 2]
    assert summary["reward"] == "1*color_target"
    for method in ("fk", "best_of_n"):
        rewards = summary[method]["rewards"]
        assert len(rewards) == 2 and all(len(r) == 2 for r in rewards)
        assert summary[method]["mean_reward"] == pytest.approx(sum(map(sum, rewards)) / 4)
        assert summary[method]["denoiser_calls"] == 2 * 2 * 3 * 4  # prompts x images x particles x steps
    assert summary["best_of_n"]["resampling_events"] == 0 < summary["fk"]["resampling_events"]


@pytest.mark.parametrize("args,message", [
    (["--potential", "best"], "unknown FK potential 'best'; valid: add, diff, max, rt"),
    (["--particles", "0"], "steer.particles': 0 must be >= 1"),
    (["--reward", "shiny"], "unknown image reward 'shiny'"),
    (["--resample-every", "0"], "steer.resample_every': 0 must be >= 1"),
    (["--reward-arg", "target=[0,0,1]"], "--reward-arg needs --reward NAME"),
])
def test_cli_bad_arguments(tiny, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["diffusion", "steer", "--model", str(tiny["sd"]), "--prompt", "a dog", "--out", str(tmp_path / "o"),
              "--quiet", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_reads_a_configs_steer_section(tiny, tmp_path, capsys):
    config = tmp_path / "steer.yaml"
    config.write_text(f"model: {{path: {tiny['sd3']}, max_sequence_length: 8}}\n"
                      "rewards: [{name: brightness}]\n"
                      "steer: {particles: 2, steps: 3, potential: rt, adaptive: true, resample_every: 1}\n")
    out = tmp_path / "out"
    main(["diffusion", "steer", "--config", str(config), "--potential", "add", "--prompt", "a dog", "--out", str(out),
          "--quiet"])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["particles"], summary["potential"], summary["steps"], summary["adaptive"]) == (2, "add", 3, True)
    assert summary["reward"] == "1*brightness" and "best_of_n" not in summary
    assert summary["fk"]["denoiser_calls"] == 2 * 3
    assert (out / "00000" / "samples" / "0000.png").is_file()
    with pytest.raises(SystemExit):
        config.write_text("steer: {particlez: 2}\n")
        main(["diffusion", "steer", "--config", str(config), "--prompt", "a dog", "--out", str(out)])
    assert "steer.particlez" in capsys.readouterr().err
