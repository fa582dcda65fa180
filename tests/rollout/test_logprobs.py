"""Lean log-probs (``mmrl.rollout.logprobs``): hand-computed values, chunking that changes nothing (values and
gradients of log-probs and entropies equal the full log-softmax's), no full
``[B, T, V]`` tensor kept for backward, and models whose logits the head alone does not give refused. Both head
paths: a bias-free linear head (``LinearHeadStats``, gradients written out) and any other head (a bias here:
checkpointed autograd)."""
from __future__ import annotations

import math

import pytest
import torch

from mmrl.errors import ConfigError
from mmrl.rollout.logprobs import head_stats, hidden_state_outputs


def hand_head() -> torch.nn.Linear:
    """Hidden [1, 0] gives logits ln[1, 2, 3, 4] (probabilities 0.1 .. 0.4); hidden [0, 1] gives zeros."""
    head = torch.nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0], [math.log(2), 0.0], [math.log(3), 0.0], [math.log(4), 0.0]]))
    return head


@pytest.mark.parametrize("temperature, logp0, entropy0", [
    # tau = 1: p = [0.1, 0.2, 0.3, 0.4]; log 0.4 = -0.916291; H = -sum p ln p = 1.279854.
    (1.0, -0.916291, 1.279854),
    # tau = 0.5: logits ln[1, 4, 9, 16], p = [1, 4, 9, 16] / 30; ln(16/30) = -0.628609;
    # H = 0.113373 + 0.268654 + 0.361192 + 0.335258 = 1.078477.
    (0.5, -0.628609, 1.078477),
])
def test_values_by_hand(temperature, logp0, entropy0):
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    ids, mask = torch.tensor([[3, 1, 3]]), torch.tensor([[1, 1, 0]])
    stats = head_stats(hand_head(), hidden, ids, mask, temperature, entropy=True, distributions=True)
    # Position 1: uniform over 4 at any temperature: log p = -ln 4 = -1.386294 = -H. Position 2 is masked: 0.
    assert stats.logp[0].tolist() == pytest.approx([logp0, -1.386294, 0.0], abs=1e-5)
    assert stats.entropy[0].tolist() == pytest.approx([entropy0, 1.386294, 0.0], abs=1e-5)
    assert stats.log_dist.shape == (1, 3, 4)
    assert stats.log_dist[0, 0].exp().tolist() == pytest.approx(
        [1 / 10, 2 / 10, 3 / 10, 4 / 10] if temperature == 1.0 else [1 / 30, 4 / 30, 9 / 30, 16 / 30], abs=1e-6)
    assert stats.entropy.requires_grad and stats.log_dist.requires_grad is False


def random_case(seed: int = 0, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(8, 50, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 8, generator=g))
        if bias:
            head.bias.copy_(torch.randn(50, generator=g))
    hidden = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    ids = torch.randint(0, 50, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    return head, hidden, ids, mask


def plain(head, hidden, ids, mask, temperature):
    """Log-probs and entropies through the full ``[B, T, V]`` log-softmax (autograd's reference)."""
    log_dist = torch.log_softmax(head(hidden).float() / temperature, dim=-1)
    logp = log_dist.gather(-1, ids[..., None]).squeeze(-1) * mask
    return logp, -(log_dist.exp() * log_dist).sum(-1) * mask


@pytest.mark.parametrize("bias", [False, True], ids=["linear-head", "head-with-bias"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_elements", [50, 150, 10_000])  # 1 row, 3 rows, all 11 rows per chunk
def test_chunked_values_and_gradients_equal_the_full_log_softmax(chunk_elements, temperature, bias):
    """Values, and gradients to the hidden states and the head of the log-probs, the entropies and a loss of
    both (``a·logp + b·H``, an entropy bonus's shape), against autograd on the full log-softmax."""
    head, hidden, ids, mask = random_case(bias=bias)
    a, b = torch.linspace(-1, 1, 15).reshape(3, 5), torch.linspace(0.5, -2, 15).reshape(3, 5)
    params = [hidden, *head.parameters()]
    losses = {"logp": lambda logp, ent: (a * logp).sum(), "entropy": lambda logp, ent: (b * ent).sum(),
              "both": lambda logp, ent: (a * logp + b * ent).sum()}
    for name, loss in losses.items():
        expected = plain(head, hidden, ids, mask, temperature)
        want = torch.autograd.grad(loss(*expected), params)
        stats = head_stats(head, hidden, ids, mask, temperature, entropy=True, chunk_elements=chunk_elements)
        assert torch.allclose(stats.logp, expected[0], atol=1e-6)
        assert torch.allclose(stats.entropy, expected[1], atol=1e-5)
        got = torch.autograd.grad(loss(stats.logp, stats.entropy), params)
        for mine, theirs in zip(got, want):
            assert torch.allclose(mine, theirs, atol=1e-5), (name, (mine - theirs).abs().max())


def largest_saved(fn) -> int:
    """The element count of the largest tensor autograd keeps for backward while ``fn`` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


@pytest.mark.parametrize("bias", [False, True], ids=["linear-head", "head-with-bias"])
def test_no_full_vocabulary_tensor_is_kept_for_backward(bias):
    head, hidden, ids, mask = random_case(bias=bias)
    full = hidden.shape[0] * hidden.shape[1] * head.weight.shape[0]  # B·T·V = 750
    assert largest_saved(lambda: plain(head, hidden, ids, mask, 1.0)[0]) >= full  # the check can fail
    lean = largest_saved(lambda: head_stats(head, hidden, ids, mask, chunk_elements=100))
    assert lean <= head.weight.numel() < full  # at most the head's own weight (V·H = 400), never B·T·V


def test_models_that_post_process_their_logits_are_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=30.0)
    model = Gemma2ForCausalLM(config)
    head = model.get_output_embeddings()
    with pytest.raises(ConfigError, match="final_logit_softcapping=30.0"):
        with hidden_state_outputs(model):
            pass
    assert model.get_output_embeddings() is head


@pytest.mark.parametrize("bias", [False, True], ids=["linear-head", "head-with-bias"])
def test_a_fully_masked_batch_still_reaches_every_parameter_with_zero_gradient(bias):
    head, hidden, ids, _ = random_case(bias=bias)
    stats = head_stats(head, hidden, ids, torch.zeros_like(ids), entropy=True)
    assert stats.logp.abs().sum() == 0 and stats.entropy.abs().sum() == 0
    grads = torch.autograd.grad(stats.logp.sum(), [hidden, head.weight])  # DDP needs every gradient, even 0
    assert all(g is not None and g.abs().sum() == 0 for g in grads)
