"""Group-shared prefix log-probs equal the full-sequence ones (fp32), for image and video prompts, with and
without LoRA, for the policy and the adapter-disabled reference, from the KV cache and (under gradient
checkpointing) from packed groups; so do their gradients. Both lean paths
(``rollout.logprobs``: the head applied in chunks after the forward pass) also equal the plain log-softmax over
the model's full logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.config import LoraConfig, ModelConfig
from mmrl.models.load import load_policy, load_processor
from mmrl.models.tiny import make_tiny
from mmrl.rollout import logprobs
from mmrl.rollout import shared as shared_prefix
from mmrl.rollout.hf import completion_hidden, encode_prompts, token_stats
from mmrl.rollout.shared import expand_batch, shared_token_stats
from mmrl.types import Sample

G, T = 3, 6


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("shared") / "ckpt", family="qwen2_5_vl")


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(str(tiny_dir), ModelConfig(path=str(tiny_dir), max_pixels=112 * 112))


def model_for(tiny_dir, lora: bool, checkpointing: bool = False):
    """The tiny policy; under ``checkpointing`` in training mode, where activation checkpointing acts (the tiny
    models have no dropout, so the mode changes nothing else)."""
    torch.manual_seed(0)
    model, _, _ = load_policy(ModelConfig(path=str(tiny_dir), lora=LoraConfig(enabled=lora, r=4, alpha=8),
                                          gradient_checkpointing=checkpointing))
    model.train(checkpointing)
    if lora:
        with torch.no_grad():  # peft starts B at 0 (adapter = identity); make the adapter matter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return model


def image_batch(processor):
    """Three prompts of different lengths and image sizes (left padding, 4 and 8 vision tokens)."""
    samples = [Sample(id=str(i), prompt="<image>click the button" + " please" * i, images=[f"{i}.png"])
               for i in range(3)]
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 255, (56 * (1 + i % 2), 56, 3), dtype=np.uint8))] for i in range(3)]
    return encode_prompts(processor, samples, images, family="qwen2_5_vl")


def video_batch(processor):
    texts = [f"<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>when{' then' * i}<|im_end|>\n"
             "<|im_start|>assistant\n" for i in range(2)]
    videos = [np.random.default_rng(i).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8) for i in range(2)]
    return processor(text=texts, videos=videos, padding=True, return_tensors="pt", do_sample_frames=False)


def completions(n_prompts: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(20, 300, (n_prompts * G, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # completions that ended early
    mask[G, 1:] = 0
    return ids, mask


def plain_logprobs(model, batch, ids, mask):
    """What the lean paths replace: the model's own logits at every completion position (``completion_hidden``
    outside ``hidden_state_outputs`` returns logits), a full ``[B, T, V]`` log-softmax, then the gather."""
    log_dist = torch.log_softmax(completion_hidden(model, batch, ids, mask).float(), dim=-1)
    return log_dist.gather(-1, ids[..., None]).squeeze(-1) * mask


def all_paths(model, batch, ids, mask):
    """Plain full sequences, lean full sequences, lean shared prefix."""
    wide = expand_batch(batch, G)
    return (plain_logprobs(model, wide, ids, mask), token_stats(model, wide, ids, mask).logp,
            shared_token_stats(model, batch, ids, mask, G).logp)


def count_calls(monkeypatch, name: str) -> list:
    """Record each call of ``mmrl.rollout.shared.<name>`` (to show which shared-prefix path ran)."""
    calls, fn = [], getattr(shared_prefix, name)
    monkeypatch.setattr(shared_prefix, name, lambda *a, **k: calls.append(1) or fn(*a, **k))
    return calls


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kv-cache", "checkpointing-packed"])
@pytest.mark.parametrize("lora", [False, True], ids=["full-ft", "lora"])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_shared_prefix_logprobs_and_gradients_equal_full_sequence(tiny_dir, processor, lora, kind, checkpointing,
                                                                   monkeypatch):
    """Under gradient checkpointing the shared prefix packs each group into one sequence (no KV cache)."""
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 5 * 1000)  # a few token rows per chunk of the head
    packed_calls = count_calls(monkeypatch, "packed_completion_hidden")
    model = model_for(tiny_dir, lora, checkpointing)
    assert shared_prefix.unsupported_reason(model) is None
    batch = image_batch(processor) if kind == "image" else video_batch(processor)
    ids, mask = completions(len(batch["input_ids"]))
    adv = torch.linspace(-1, 1, len(ids))[:, None]

    plain, full, shared = all_paths(model, batch, ids, mask)
    for lean in (full, shared):
        assert torch.allclose(lean, plain, atol=1e-5), (lean - plain).abs().max()

    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.autograd.grad((-(adv * logp) * mask).sum(), params, retain_graph=True)
             for logp in (plain, full, shared)]
    checked = 0
    for gp, gf, gs in zip(*grads):
        if gp.abs().max() > 0:
            for lean in (gf, gs):
                assert torch.allclose(lean, gp, rtol=1e-5, atol=1e-5 * gp.abs().max()), (lean - gp).abs().max()
            checked += 1
    assert checked > 0.9 * len(params)  # vision tower, prompt and completion weights all get gradients
    assert bool(packed_calls) == checkpointing

    if lora:  # the reference policy: adapters disabled, same equality
        with model.disable_adapter(), torch.no_grad():
            ref_plain, ref_full, ref_shared = all_paths(model, batch, ids, mask)
        assert torch.allclose(ref_full, ref_plain, atol=1e-5) and torch.allclose(ref_shared, ref_plain, atol=1e-5)
        assert not torch.allclose(ref_full, full.detach(), atol=1e-4)  # the adapter really was off


def test_expand_batch_repeats_each_prompt_with_its_image(processor):
    batch = image_batch(processor)
    wide = expand_batch(batch, 2)
    assert torch.equal(wide["input_ids"], batch["input_ids"].repeat_interleave(2, dim=0))
    assert wide["image_grid_thw"].tolist() == batch["image_grid_thw"].repeat_interleave(2, dim=0).tolist()
    sizes = batch["image_grid_thw"].prod(-1).tolist()  # patches per image: 16, 32, 16
    first = batch["pixel_values"][: sizes[0]]
    assert torch.equal(wide["pixel_values"][: sizes[0]], first) and torch.equal(wide["pixel_values"][sizes[0]: 2 * sizes[0]], first)


# ---------------------------------------------------------------- shared-prefix generation


@pytest.mark.parametrize("lora", [False, True], ids=["full-ft", "lora"])
def test_shared_greedy_generation_equals_hf_generate(tiny_dir, processor, lora):
    """Greedy tokens equal HF ``generate``'s on the prompts repeated G times, also through peft's wrapper (the
    prefix-shared attention is switched on in the wrapped model's config)."""
    from mmrl.models.load import placeholder_ids
    from mmrl.rollout.hf import generate
    from mmrl.rollout.shared import shared_generate

    model = model_for(tiny_dir, lora=lora)
    batch = image_batch(processor)
    suppress = placeholder_ids(processor.tokenizer)
    hf = generate(model, processor, expand_batch(batch, G), max_new_tokens=8, do_sample=False, suppress_ids=suppress)
    ours = shared_generate(model, processor, batch, G, max_new_tokens=8, do_sample=False, suppress_ids=suppress)
    assert torch.equal(hf.ids, ours.ids) and torch.equal(hf.mask, ours.mask)
    assert hf.texts == ours.texts and hf.truncated == ours.truncated


def test_shared_sampling_respects_suppression_and_top_p():
    from mmrl.rollout.shared import sample_next

    torch.manual_seed(0)
    logits = torch.tensor([[3.0, 2.0, 0.0, -1.0]]).repeat(2000, 1)
    # Suppressing token 0 leaves softmax over [2, 0, -1]: p = 0.8438, 0.1142, 0.0420.
    draws = sample_next(logits, 1.0, 1.0, [0])
    assert (draws != 0).all()
    assert (draws == 1).float().mean().item() == pytest.approx(0.8438, abs=0.03)
    # top_p = 0.7 over softmax [3, 2, 0, -1] = [0.6964, 0.2562, 0.0347, 0.0128]: token 0 alone holds 0.6964 < 0.7,
    # so the nucleus is {0, 1}, renormalised to 0.7311 / 0.2689.
    draws = sample_next(logits, 1.0, 0.7, None)
    assert set(draws.tolist()) == {0, 1}
    assert (draws == 0).float().mean().item() == pytest.approx(0.7311, abs=0.03)
    # Temperature 0.5 doubles the logit gaps: p(0) = e^6 / (e^6 + e^4 + 1 + e^-2) = 0.8786.
    draws = sample_next(logits, 0.5, 1.0, None)
    assert (draws == 0).float().mean().item() == pytest.approx(0.8786, abs=0.03)


def first_token_gap(model, processor, batch, temperature: float = 0.05, draws: int = 3000) -> float:
    """The largest gap, over each prompt's 5 likeliest first tokens, between how often ``shared_generate`` (``draws``
    completions of one token per prompt) draws a token and its probability ``softmax(logits / T)`` from a plain
    forward pass over the prompt. One binomial standard deviation is at most 0.009 at 3,000 draws; at T = 0.05 the
    likeliest token holds ~0.5-0.95 of the mass on the tiny models, so a sampler 30% off in temperature shows a gap
    of ~0.2."""
    from mmrl.rollout.shared import shared_generate

    torch.manual_seed(7)
    ours = shared_generate(model, processor, batch, draws, max_new_tokens=1, temperature=temperature)
    with torch.no_grad():
        probs = (model(**batch).logits[:, -1].float() / temperature).softmax(-1)
    gaps = []
    for p, drawn in zip(probs, ours.ids[:, 0].view(len(probs), draws)):
        counts = torch.bincount(drawn, minlength=len(p)).float() / draws
        top = p.topk(5).indices
        gaps.append((counts[top] - p[top]).abs().max().item())
    return max(gaps)


def test_shared_sampling_draws_from_the_policys_distribution(tiny_dir, processor):
    """The same tokens as HF ``generate`` greedily (above); sampled, the first tokens' frequencies match the
    policy's probabilities (``draw`` replaces HF's ``torch.multinomial``, so the seeds no longer give the same
    tokens)."""
    model = model_for(tiny_dir, lora=False)
    assert first_token_gap(model, processor, image_batch(processor)) < 0.035


def test_draw_follows_the_distribution_across_blocks():
    """Inverse-CDF draws of 40,000 rows over 3,000 indices (blocks of 1,024: two full, one partial): the
    frequencies are within 0.01 of the probabilities (4 binomial standard deviations at most), also at a block's
    last and next block's first index and in the partial block, and no zero-probability index is ever drawn."""
    from mmrl.rollout.shared import draw

    torch.manual_seed(0)
    probs = torch.zeros(3000)
    where = [0, 1023, 1024, 2047, 2999]
    probs[where] = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    drawn = draw(probs.repeat(40000, 1))
    assert set(drawn.unique().tolist()) <= set(where)
    freq = torch.bincount(drawn, minlength=3000).float() / len(drawn)
    assert torch.allclose(freq[where], probs[where], atol=0.01), freq[where]
    assert draw(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])).tolist() == [2, 0]


def test_length_buckets_minimise_padded_positions():
    """Lengths 5 1 5 3 2 5, sorted 1 2 3 5 5 5 (rows 1 4 3 0 2 5). One bucket pads to 6 * 5 = 30 positions; two:
    cut after 2 rows, 2*2 + 4*5 = 24 (after 3 rows ties at 3*3 + 3*5 = 24; the first is kept); four: 1 + 2 + 3 +
    3*5 = 21."""
    lengths = [5, 1, 5, 3, 2, 5]
    assert shared_prefix.length_buckets(lengths, 1) == [[1, 4, 3, 0, 2, 5]]
    assert shared_prefix.length_buckets(lengths, 2) == [[1, 4], [3, 0, 2, 5]]
    assert shared_prefix.length_buckets(lengths, 4) == [[1], [4], [3], [0, 2, 5]]
    assert shared_prefix.length_buckets([7, 7, 7], 4) == [[0, 1, 2]]  # no cut saves anything: one bucket
