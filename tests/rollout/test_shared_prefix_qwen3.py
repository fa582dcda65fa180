"""Group-shared prefix on Qwen3-VL and Qwen3.5 (hybrid linear attention) equals the full-sequence path, as
``test_shared_prefix.py`` checks for Qwen2.5-VL: log-probs within 1e-5 in fp32 and their gradients, for image and
timestamped-video prompts, with and without LoRA, for the policy and the adapter-disabled reference (Qwen3-VL
also packed under gradient checkpointing; Qwen3.5 refuses that); greedy generation gives HF ``generate``'s
tokens, sampled generation draws from the policy's distribution.

Qwen3-VL adds deepstack visual features (added to the first decoder layers' hidden states at the vision tokens:
all inside the prefill) and interleaved M-RoPE; Qwen3.5 adds linear-attention layers whose conv and recurrent
states must be repeated per group like the KV cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_shared_prefix import G, all_paths, completions, first_token_gap, model_for
from transformers.cache_utils import Cache

from mmrl.config import ModelConfig
from mmrl.models.load import load_policy, load_processor, placeholder_ids
from mmrl.models.tiny import make_tiny
from mmrl.rollout.hf import encode_prompts, generate
from mmrl.rollout.shared import expand_batch, shared_generate, unsupported_reason
from mmrl.types import Sample
from mmrl.vision import VideoClip, VideoInfo

FAMILIES = ["qwen3_vl", "qwen3_5"]
DECAY_PARAMS = ("linear_attn.A_log", "linear_attn.dt_bias", "linear_attn.in_proj_a.weight")
"""Qwen3.5's gated-delta-rule decay ``g = -exp(A_log) * softplus(in_proj_a(x) + dt_bias)``: their gradients sum
products of decays over every position, which transformers' chunked kernel (fp32 inside, whatever the model's
dtype) associates differently for one sequence than for a prompt and then a continuation from its state."""
DECAY_TOL = 3e-3
"""Their gradient tolerance, as a fraction of the largest entry: measured here up to 7.4e-4 (in fp32; 3.5e-7 with
the kernel run in fp64, so rounding, not a different function). Every other gradient: 1e-5, as for Qwen2.5-VL."""


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, family):
    return make_tiny(tmp_path_factory.mktemp(family) / "ckpt", family=family)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(str(tiny_dir), ModelConfig(path=str(tiny_dir)))


def image_batch(processor, family):
    """Three prompts of different lengths (left padding) with 64x64 and 128x64 images (sides multiples of 32:
    4 and 8 vision tokens)."""
    samples = [Sample(id=str(i), prompt="<image>click the button" + " please" * i, images=[f"{i}.png"])
               for i in range(3)]
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 255, (64 * (1 + i % 2), 64, 3), dtype=np.uint8))] for i in range(3)]
    return encode_prompts(processor, samples, images, family=family)


def video_batch(processor, family):
    """Two prompts with a 4-frame video each (64x64 and 64x96 frames): two temporal patches, each after its time
    as text (``<0.2 seconds>``), so each prompt has text between its two runs of video tokens."""
    samples = [Sample(id=f"v{i}", prompt="<video>when" + " then" * i, videos=["v.mp4"]) for i in range(2)]
    info = VideoInfo("v.mp4", n_frames=8, fps=4.0, duration=2.0, width=64, height=64)
    frames = [torch.randint(0, 255, (4, 3, 64, 64 + 32 * i), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(i)) for i in range(2)]
    clips = [[VideoClip(f, [0.0, 0.5, 1.0, 1.5], 2.0, info)] for f in frames]
    return encode_prompts(processor, samples, [[], []], clips, family=family)


def prompts(processor, family, kind):
    return image_batch(processor, family) if kind == "image" else video_batch(processor, family)


def test_batches_have_what_the_tests_need(processor, family):
    images, videos = image_batch(processor, family), video_batch(processor, family)
    assert images["image_grid_thw"].tolist() == [[1, 4, 4], [1, 8, 4], [1, 4, 4]]
    assert videos["video_grid_thw"].tolist() == [[2, 4, 4], [2, 4, 6]]
    assert "seconds>" in processor.tokenizer.decode(videos["input_ids"][0])
    for batch in (images, videos):
        assert (batch["attention_mask"] == 0).any()  # left padding


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kv-cache", "checkpointing-packed"])
@pytest.mark.parametrize("lora", [False, True], ids=["full-ft", "lora"])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_shared_prefix_logprobs_and_gradients_equal_full_sequence(tiny_dir, processor, family, lora, kind,
                                                                   checkpointing):
    if checkpointing and family == "qwen3_5":
        pytest.skip("Qwen3.5 refuses the packed groups (test_unsupported_reason_under_gradient_checkpointing)")
    model = model_for(tiny_dir, lora, checkpointing)
    assert unsupported_reason(model) is None
    batch = prompts(processor, family, kind)
    ids, mask = completions(len(batch["input_ids"]))
    adv = torch.linspace(-1, 1, len(ids))[:, None]

    plain, full, shared = all_paths(model, batch, ids, mask)
    assert torch.allclose(full, plain, atol=1e-5), (full - plain).abs().max()
    assert torch.allclose(full, shared, atol=1e-5), (full - shared).abs().max()

    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = [torch.autograd.grad((-(adv * logp) * mask).sum(), params, retain_graph=True) for logp in (full, shared)]
    nonzero = [(name, gf, gs) for name, gf, gs in zip(names, *grads) if gf.abs().max() > 0]
    for name, gf, gs in nonzero:
        tol = DECAY_TOL if name.endswith(DECAY_PARAMS) else 1e-5
        assert torch.allclose(gs, gf, rtol=1e-5, atol=tol * gf.abs().max()), (name, (gs - gf).abs().max())
    assert len(nonzero) > 0.9 * len(params)  # vision tower, prompt and completion weights all get gradients

    if lora:  # the reference policy: adapters disabled, same equality
        with model.disable_adapter(), torch.no_grad():
            _, ref_full, ref_shared = all_paths(model, batch, ids, mask)
        assert torch.allclose(ref_full, ref_shared, atol=1e-5), (ref_full - ref_shared).abs().max()
        assert not torch.allclose(ref_full, full.detach(), atol=1e-4)  # the adapter really was off


def both_generations(model, processor, batch, **kwargs):
    """HF ``generate`` on the prompts repeated G times, and ``shared_generate``, each from seed 7."""
    torch.manual_seed(7)
    hf = generate(model, processor, expand_batch(batch, G), **kwargs)
    torch.manual_seed(7)
    return hf, shared_generate(model, processor, batch, G, **kwargs)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_shared_greedy_generation_equals_hf_generate(tiny_dir, processor, family, kind):
    model = model_for(tiny_dir, lora=False)
    hf, ours = both_generations(model, processor, prompts(processor, family, kind), max_new_tokens=8,
                                do_sample=False, suppress_ids=placeholder_ids(processor.tokenizer))
    assert torch.equal(hf.ids, ours.ids) and torch.equal(hf.mask, ours.mask)
    assert hf.texts == ours.texts and hf.truncated == ours.truncated


def test_finished_rows_leave_the_decoding_batch_and_the_tokens_stay_hf_generates(tiny_dir, processor, family,
                                                                                 monkeypatch):
    """A random tiny model rarely ends a completion, so a token its greedy completions use often plays the end
    token: then most rows finish at different steps, the decoding batch shrinks (``cache.reorder_cache`` on the
    rows left, linear-attention states included) and every token still equals HF ``generate``'s."""
    model = model_for(tiny_dir, lora=False)
    batch = prompts(processor, family, "image")
    greedy = {"max_new_tokens": 12, "do_sample": False, "suppress_ids": placeholder_ids(processor.tokenizer)}
    free = generate(model, processor, expand_batch(batch, G), **greedy).ids
    counts = torch.bincount(free[:, 1:].flatten())
    monkeypatch.setattr(processor.tokenizer, "eos_token", processor.tokenizer.convert_ids_to_tokens(
        int(counts.argmax())))
    shrinks, original = [], Cache.reorder_cache
    monkeypatch.setattr(Cache, "reorder_cache", lambda self, idx: shrinks.append(len(idx)) or original(self, idx))
    hf, ours = both_generations(model, processor, batch, **greedy)
    lengths = ours.mask.sum(-1)
    assert (lengths < 12).sum() >= len(lengths) // 2 and (lengths == 12).any(), lengths
    assert any(n < len(lengths) for n in shrinks), shrinks  # the batch shrank (the first reorder repeats prompts)
    assert torch.equal(hf.ids, ours.ids) and torch.equal(hf.mask, ours.mask) and hf.texts == ours.texts


@pytest.mark.parametrize("kind", ["image", "video"])
def test_shared_sampling_draws_from_the_policys_distribution(tiny_dir, processor, family, kind):
    model = model_for(tiny_dir, lora=False)
    assert first_token_gap(model, processor, prompts(processor, family, kind)) < 0.035


def test_unsupported_reason_names_the_family_without_a_shared_prefix(tmp_path):
    path = make_tiny(tmp_path / "smolvlm", family="smolvlm")
    model, _, _ = load_policy(ModelConfig(path=str(path)))
    assert unsupported_reason(model) == "model type 'smolvlm' runs as family 'generic', which has no shared-prefix support"


def test_unsupported_reason_under_gradient_checkpointing(tiny_dir, family):
    """Checkpointing packs each group into one sequence: fine for attention layers (sdpa), not for Qwen3.5's
    linear-attention recurrence, nor for an attention kernel without 4-D masks."""
    model, _, _ = load_policy(ModelConfig(path=str(tiny_dir), gradient_checkpointing=True))
    if family == "qwen3_5":
        assert "cannot run linear-attention layers" in unsupported_reason(model)
    else:
        assert unsupported_reason(model) is None
        eager, _, _ = load_policy(ModelConfig(path=str(tiny_dir), gradient_checkpointing=True,
                                              attn_implementation="eager"))
        assert "attn_implementation 'eager' does not; use sdpa" in unsupported_reason(eager)
