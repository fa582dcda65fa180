"""Step-with-log-prob samplers against the Gaussian density, diffusers' own steps, and hand numbers."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from mmrl.diffusion.samplers import (DDIMSampler, FlowSampler, ddim_step_with_logprob, flow_sde_step_with_logprob,
                                     gaussian_logprob, rollout)


def sd15_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def normal_logprob(x, mean, std):
    """Element-mean log-density with torch.distributions (the reference the samplers must match)."""
    return torch.distributions.Normal(mean, std).log_prob(x).mean(dim=tuple(range(1, x.ndim)))


def test_gaussian_logprob_hand_number():
    # log N(1; 0, 2²) = -1/8 - log 2 - log sqrt(2π)
    x, mean, std = torch.ones(1, 1), torch.zeros(1, 1), torch.tensor(2.0)
    assert gaussian_logprob(x, mean, std).item() == pytest.approx(-0.125 - math.log(2) - 0.5 * math.log(2 * math.pi))


def test_ddim_logprob_is_the_gaussian_density_of_the_draw():
    scheduler = sd15_scheduler()
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([901, 501, 101])
    step = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, generator=g)
    a = scheduler.alphas_cumprod
    for row, (ti, prev) in enumerate([(901, 801), (501, 401), (101, 1)]):
        a_t, a_p = a[ti], a[prev]
        std = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
        x0 = (x[row] - (1 - a_t).sqrt() * eps[row]) / a_t.sqrt()
        mean = a_p.sqrt() * x0 + (1 - a_p - std**2).sqrt() * eps[row]
        torch.testing.assert_close(step.mean[row], mean)
        assert step.std[row].item() == pytest.approx(std.item())
    expected = normal_logprob(step.prev_sample, step.mean, step.std.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(step.log_prob, expected)


def test_ddim_step_matches_diffusers_with_the_same_noise():
    scheduler = sd15_scheduler()
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for eta in (0.0, 1.0):
        ours = ddim_step_with_logprob(scheduler, eps, torch.tensor([501, 501]), x, eta=eta, generator=g)
        noise = (ours.prev_sample - ours.mean) / ours.std.reshape(-1, 1, 1, 1) if eta else None
        ref = scheduler.step(eps, 501, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours.prev_sample, ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(ours.log_prob).all()
    zero = ddim_step_with_logprob(scheduler, eps, torch.tensor([501, 501]), x, eta=0.0)
    assert torch.equal(zero.log_prob, torch.zeros(2))


def test_flow_sde_step_hand_numbers():
    # σ = 0.5 -> 0.4, a = 0.7: std = 0.7·sqrt(0.5/0.5) = 0.7, dt = -0.1,
    # mean = x·(1 + 0.49/1·(-0.1)) + v·(1 + 0.49·0.5/1)·(-0.1) = 0.951·x - 0.1245·v, step std = 0.7·sqrt(0.1)
    x, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[2.0, 1.0]])
    step = flow_sde_step_with_logprob(torch.tensor(0.5), torch.tensor(0.4), v, x, 0.7, sigma_max=0.9,
                                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step.mean, torch.tensor([[0.951 - 0.249, -1.902 - 0.1245]]))
    assert step.std.item() == pytest.approx(0.7 * math.sqrt(0.1))
    torch.testing.assert_close(step.log_prob, normal_logprob(step.prev_sample, step.mean, step.std[0]))


def test_flow_sde_first_step_uses_sigma_max_in_the_denominator():
    # σ = 1 -> 0.9 with sigma_max 0.9: std = a·sqrt(1/(1-0.9)) = 0.5·sqrt(10), dt = -0.1
    x, v = torch.zeros(1, 3), torch.ones(1, 3)
    step = flow_sde_step_with_logprob(torch.tensor(1.0), torch.tensor(0.9), v, x, 0.5, sigma_max=0.9)
    std = 0.5 * math.sqrt(10)
    assert step.std.item() == pytest.approx(std * math.sqrt(0.1))
    torch.testing.assert_close(step.mean, torch.full((1, 3), (1 + std**2 * 0 / 2) * -0.1))


def test_flow_ode_step_matches_diffusers_euler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sampler = FlowSampler(scheduler, steps=10, noise_level=0.0)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    ref_scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref_scheduler.set_timesteps(10)
    ref = ref_scheduler.step(v, ref_scheduler.timesteps[3], x.clone()).prev_sample
    ours = sampler.step(3, v, x)
    torch.testing.assert_close(ours.prev_sample, ref)
    assert torch.equal(ours.log_prob, torch.zeros(2))


def toy_denoiser(x, t):
    """A fixed smooth function of the state and time, standing in for the network."""
    return 0.3 * torch.tanh(x) + (t.float() / 1000.0).reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("make", [lambda: DDIMSampler(sd15_scheduler(), 6, eta=1.0),
                                  lambda: FlowSampler(FlowMatchEulerDiscreteScheduler(shift=3.0), 6, 0.7)],
                         ids=["ddim", "flow_sde"])
def test_rescoring_a_stored_transition_reproduces_its_logprob(make):
    sampler = make()
    g = torch.Generator().manual_seed(3)
    traj = rollout(toy_denoiser, sampler, torch.randn(4, 4, 8, 8, generator=g), g)
    assert traj.latents.shape == (4, 7, 4, 8, 8) and traj.log_probs.shape == (4, 6)
    for i in range(6):
        x = traj.latents[:, i]
        again = sampler.step(i, toy_denoiser(x, sampler.model_time(i).expand(4)), x, prev_sample=traj.latents[:, i + 1])
        torch.testing.assert_close(again.log_prob, traj.log_probs[:, i], rtol=0, atol=1e-6)
    # one step index per sample (how the PPO update re-scores shuffled steps)
    idx = torch.tensor([5, 0, 3, 1])
    rows = torch.arange(4)
    x = traj.latents[rows, idx]
    again = sampler.step(idx, toy_denoiser(x, sampler.model_time(idx)), x, prev_sample=traj.latents[rows, idx + 1])
    torch.testing.assert_close(again.log_prob, traj.log_probs[rows, idx], rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_rollout_gradients_reach_only_the_last_k_steps(k):
    """A learnable scale per step multiplies the denoiser output: only the last K scales get gradient."""
    steps = 5
    sampler = DDIMSampler(sd15_scheduler(), steps, eta=0.0)
    scales = torch.nn.Parameter(torch.ones(steps))
    index = {int(t): i for i, t in enumerate(sampler.timesteps)}

    def denoise(x, t):
        return scales[index[int(t)]] * toy_denoiser(x, t.expand(len(x)))

    traj = rollout(denoise, sampler, torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5)),
                   grad_steps=k)
    traj.final.square().sum().backward()
    assert (scales.grad[: steps - k] == 0).all()
    assert (scales.grad[steps - k:] != 0).all()


@pytest.mark.parametrize("make", [lambda: DDIMSampler(sd15_scheduler(), 6, eta=1.0),
                                  lambda: FlowSampler(FlowMatchEulerDiscreteScheduler(shift=3.0), 6, 0.7)],
                         ids=["ddim", "flow_sde"])
def test_a_stochastic_window_leaves_the_other_steps_deterministic(make):
    """``sampling.sde_window`` [1, 3): steps 1 and 2 draw noise (log-prob < 0 here), steps 0, 3, 4, 5 are the
    deterministic step from the same state (η = 0, log-prob 0 by convention)."""
    sampler = make()
    traj = rollout(toy_denoiser, sampler, torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
                   torch.Generator().manual_seed(2), stochastic=range(1, 3))
    assert (traj.log_probs[:, [0, 3, 4, 5]] == 0).all() and (traj.log_probs[:, 1:3] != 0).all()
    for i in (0, 3, 4, 5):
        x = traj.latents[:, i]
        plain = sampler.step(i, toy_denoiser(x, sampler.model_time(i).expand(3)), x, eta=0.0)
        torch.testing.assert_close(traj.latents[:, i + 1], plain.prev_sample, rtol=0, atol=0)
    x = traj.latents[:, 1]
    plain = sampler.step(1, toy_denoiser(x, sampler.model_time(1).expand(3)), x, eta=0.0)
    assert (traj.latents[:, 2] - plain.prev_sample).abs().max() > 1e-3  # step 1 really drew noise
