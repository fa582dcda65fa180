"""A tiny-bodied Qwen2.5-VL around Qwen's real 151,669-token tokenizer (``make_tiny(tokenizer="qwen")``): the
checkpoint loads through ``from_pretrained`` with the real special-token ids, and the lean log-probs equal the
full log-softmax at that vocabulary, values and gradients."""
from __future__ import annotations

import pytest
import torch
from test_shared_prefix import image_batch, plain_logprobs

from mmrl.config import ModelConfig
from mmrl.errors import ConfigError
from mmrl.models.load import load_policy, load_processor
from mmrl.models.tiny import make_tiny
from mmrl.rollout.hf import token_stats

QWEN_VOCAB = 151_669


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("real") / "ckpt", family="qwen2_5_vl", tokenizer="qwen")


def test_the_checkpoint_has_qwens_vocabulary_and_special_tokens(real_dir):
    processor = load_processor(str(real_dir), ModelConfig(path=str(real_dir)))
    tok = processor.tokenizer
    assert len(tok) == QWEN_VOCAB
    # Qwen's own ids (tokenizer_config.json of Qwen2.5-VL): <|im_start|> 151644, <|im_end|> 151645,
    # <|vision_start|> 151652, <|image_pad|> 151655.
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"]) == \
        [151644, 151645, 151652, 151655]
    model, _, _ = load_policy(ModelConfig(path=str(real_dir)))
    assert model.get_output_embeddings().weight.shape[0] == QWEN_VOCAB
    assert model.config.image_token_id == 151655


def test_lean_logprobs_equal_the_full_log_softmax_at_the_real_vocabulary(real_dir, monkeypatch):
    from mmrl.rollout import logprobs

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 4 * QWEN_VOCAB)  # 4 token rows per chunk of the head
    processor = load_processor(str(real_dir), ModelConfig(path=str(real_dir), max_pixels=112 * 112))
    torch.manual_seed(0)
    model, _, _ = load_policy(ModelConfig(path=str(real_dir)))
    model.eval()
    batch = image_batch(processor)
    ids = torch.randint(0, 151_000, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    plain = plain_logprobs(model, batch, ids, mask)
    lean = token_stats(model, batch, ids, mask).logp
    assert torch.allclose(lean, plain, atol=1e-5), (lean - plain).abs().max()
    params = [model.get_output_embeddings().weight, model.model.language_model.layers[-1].mlp.down_proj.weight]
    adv = torch.tensor([[1.0], [-0.5], [0.25]])
    want = torch.autograd.grad((adv * plain).sum(), params)
    got = torch.autograd.grad((adv * lean).sum(), params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-5 * w.abs().max()), (g - w).abs().max()


def test_a_missing_tokenizer_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer folder not found: .*nowhere"):
        make_tiny(tmp_path / "x", tokenizer=tmp_path / "nowhere")
