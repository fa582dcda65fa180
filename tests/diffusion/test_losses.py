"""Diffusion losses and advantages on hand-computed numbers."""
import math

import pytest
import torch

from mmrl.diffusion.losses import (PerPromptStatTracker, awm_loss, gaussian_mean_kl, group_advantages,
                                   ppo_clip_loss, renoise, stratified_times)


def test_ppo_clip_loss_hand_numbers():
    # ratio 1.5 with ε = 0.2: A = +1 -> max(-1.5, -1.2) = -1.2; A = -1 -> max(1.5, 1.2) = 1.5
    old = torch.zeros(2)
    logp = torch.full((2,), math.log(1.5))
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([1.0, -1.0]), 0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["ratio"] == pytest.approx(1.5) and stats["clipfrac"] == 1.0
    assert stats["approx_kl"] == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_ppo_clip_loss_at_ratio_one_is_minus_mean_advantage_with_gradient():
    logp = torch.zeros(3, requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.5])
    loss, stats = ppo_clip_loss(logp, torch.zeros(3), adv, 1e-4)
    assert loss.item() == pytest.approx(-adv.mean().item()) and stats["clipfrac"] == 0.0
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 3)


def test_gaussian_mean_kl_hand_numbers():
    # mean((μθ − μref)²) = (1 + 4)/2 = 2.5, std 0.5 -> 2.5 / (2·0.25) = 5
    mean = torch.tensor([[1.0, 2.0]])
    kl = gaussian_mean_kl(mean, torch.zeros(1, 2), torch.tensor([0.5]))
    assert kl.item() == pytest.approx(5.0)


def test_group_advantages_hand_numbers():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0])
    adv = group_advantages(rewards, 2, eps=0.0 + 1e-4)
    # group 1: mean 2, population std 1 -> (-1, 1)/(1 + 1e-4); group 2: all equal -> 0
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (1 + 1e-4))
    # global std of [1, 3, 10, 10] (population) = sqrt(mean(x²) - mean²) = sqrt(52.5 - 36) = sqrt(16.5)
    adv_global = group_advantages(rewards, 2, global_std=True)
    torch.testing.assert_close(adv_global, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (math.sqrt(16.5) + 1e-4))


def test_per_prompt_stat_tracker_uses_batch_then_prompt_history():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    # first call: each prompt has 2 < 3 rewards -> batch statistics (mean 2.5, std sqrt(1.25))
    adv = tracker.update(["a", "a", "b", "b"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(adv, (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / (math.sqrt(1.25) + 1e-6))
    # second call: "a" now has [1, 2, 4, 5] (4 >= 3) -> mean 3, std sqrt(2.5)
    adv = tracker.update(["a", "a"], torch.tensor([4.0, 5.0]))
    torch.testing.assert_close(adv, torch.tensor([1.0, 2.0]) / (math.sqrt(2.5) + 1e-6))
    # the buffer keeps the last 4 and round-trips through state_dict
    tracker.update(["a"], torch.tensor([9.0]))
    restored = PerPromptStatTracker(4, 3)
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict()["a"] == [2.0, 4.0, 5.0, 9.0]


def test_stratified_times_one_draw_per_bin():
    t = stratified_times(50, 4, torch.Generator().manual_seed(0))
    assert t.shape == (50, 4)
    for k in range(4):
        assert ((t[:, k] >= k / 4) & (t[:, k] < (k + 1) / 4)).all()


def test_awm_loss_is_the_advantage_weighted_flow_matching_loss():
    # two samples, two elements each; flow-matching target ε − x0
    velocity = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    noise = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    x0 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # sample 1: target (1, 1), error mean((0, -1)²) = 0.5; sample 2: target (-1, -1), error mean((1, 3)²) = 5
    adv = torch.tensor([2.0, -1.0])
    loss = awm_loss(velocity, noise - x0, adv)
    assert loss.item() == pytest.approx((2.0 * 0.5 - 1.0 * 5.0) / 2)
    # with the regulariser to a base output of zeros: + λ·mean(v²) = λ·(1 + 4)/4
    base = torch.zeros(2, 2)
    assert awm_loss(velocity, noise - x0, adv, base, 0.1).item() == pytest.approx(-2.0 + 0.1 * 1.25)
    loss.backward()
    # d/dv of A_i·mean((v − target)²)/2 = A_i·(v − target)/2 (mean over 2 elements, then over 2 samples)
    torch.testing.assert_close(velocity.grad, torch.tensor([[0.0, -1.0], [-0.5, -1.5]]))


def test_renoise_flow_matching_hand_numbers():
    x0, noise = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    x_t, t, target = renoise(x0, noise, torch.tensor([0.25]), None)
    torch.testing.assert_close(x_t, torch.tensor([[1.5, 1.0]]))  # 0.75·x0 + 0.25·ε
    torch.testing.assert_close(t, torch.tensor([250.0]))
    torch.testing.assert_close(target, torch.tensor([[-2.0, 4.0]]))  # ε − x0


def test_renoise_ddpm_uses_the_forward_process():
    alphas = torch.tensor([0.9, 0.64, 0.36, 0.16])
    x0, noise = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    x_t, t, target = renoise(x0, noise, torch.tensor([0.6]), alphas, "epsilon")  # t = ⌊0.6·4⌋ = 2, ᾱ = 0.36
    assert t.tolist() == [2]
    torch.testing.assert_close(x_t, torch.tensor([[0.6 * 1.0 + 0.8 * 2.0]]))
    torch.testing.assert_close(target, noise)
    _, _, v = renoise(x0, noise, torch.tensor([0.6]), alphas, "v_prediction")
    torch.testing.assert_close(v, torch.tensor([[0.6 * 2.0 - 0.8 * 1.0]]))
