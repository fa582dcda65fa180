"""Prefix-shared decoding attention (``rollout.cascade``): equal to attention over each row's whole sequence,
with the prompt's keys held once per prompt. (That ``shared_generate``, which decodes through it, gives HF
``generate``'s greedy tokens for every Qwen family, with rows leaving the batch, is tested in
``test_shared_prefix.py`` / ``test_shared_prefix_qwen3.py``.)"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from mmrl.config import ModelConfig
from mmrl.models.load import load_policy
from mmrl.models.tiny import make_tiny
from mmrl.rollout.cascade import (ATTENTION, PrefixSharedLayer, prefix_shared_attention, prefix_shared_decoding,
                                  prompt_slots, share_prompt_cache)
from mmrl.rollout.shared import repeat_cache


def test_prompt_slots_place_each_prompts_rows_side_by_side():
    # owner [0, 0, 2, 2, 2] over 3 prompts: counts 2, 0, 3 -> width 3; prompt 2's rows at 2*3 + 0, 1, 2.
    slots, width = prompt_slots(torch.tensor([0, 0, 2, 2, 2]), 3)
    assert width == 3 and slots.tolist() == [0, 1, 6, 7, 8]
    # Rows need not be sorted: owner [2, 0, 2, 0] -> width 2; rows 1, 3 take prompt 0's places 0, 1 and rows 0, 2
    # prompt 2's places 4, 5, each in row order.
    slots, width = prompt_slots(torch.tensor([2, 0, 2, 0]), 3)
    assert width == 2 and slots.tolist() == [4, 0, 5, 1]
    # Every prompt with `width` rows, in prompt order (before any row leaves): the grid is the rows, no index.
    assert prompt_slots(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == (None, 2)
    assert prompt_slots(torch.tensor([0, 1, 0, 1, 2, 2]), 3)[0].tolist() == [0, 2, 1, 3, 4, 5]


def cache_of(prompt_keys, prompt_values, prompt_mask, owner, own_keys, own_values):
    """A one-layer cache as decoding leaves it: the prompts' keys once, rows repeated/dropped by ``owner``,
    each row's own keys written in two updates."""
    prefill = DynamicLayer()
    prefill.update(prompt_keys, prompt_values)
    layer = PrefixSharedLayer(prefill, prompt_mask, reserve=own_keys.shape[-2] + 2)
    layer.reorder_cache(owner)
    layer.update(own_keys[..., :1, :], own_values[..., :1, :])
    layer.update(own_keys[..., 1:, :], own_values[..., 1:, :])
    return SimpleNamespace(layers=[layer])


@pytest.mark.parametrize("owner", [[0, 0, 0, 1, 2, 2],  # unequal groups, as once rows have left
                                   [0, 0, 1, 1, 2, 2]])  # full groups in order: no slot index
def test_prefix_shared_attention_equals_attention_over_each_rows_whole_sequence(owner):
    torch.manual_seed(0)
    prompts, kv_heads, rep, dim, prompt_len, own_len = 3, 2, 3, 8, 5, 4
    owner = torch.tensor(owner)
    rows = len(owner)
    pk, pv = torch.randn(prompts, kv_heads, prompt_len, dim), torch.randn(prompts, kv_heads, prompt_len, dim)
    prompt_mask = torch.ones(prompts, prompt_len, dtype=torch.long)
    prompt_mask[1, :2] = 0  # left padding
    ok, ov = torch.randn(rows, kv_heads, own_len, dim), torch.randn(rows, kv_heads, own_len, dim)
    query = torch.randn(rows, kv_heads * rep, 1, dim)
    cache = cache_of(pk, pv, prompt_mask, owner, ok, ov)
    layer = cache.layers[0]
    assert layer.prompt_keys.shape[0] == prompts and layer.get_seq_length() == prompt_len + own_len
    out, weights = prefix_shared_attention(SimpleNamespace(layer_idx=0), query, layer.keys, layer.values, None,
                                           scaling=dim**-0.5, prefix_cache=cache)
    keys, values = torch.cat([pk[owner], ok], dim=2), torch.cat([pv[owner], ov], dim=2)
    visible = torch.cat([prompt_mask[owner], torch.ones(rows, own_len, dtype=torch.long)], dim=1).bool()
    expected = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible[:, None, None], enable_gqa=True)
    assert weights is None and out.shape == (rows, 1, kv_heads * rep, dim)
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-6), (out - expected.transpose(1, 2)).abs().max()


def test_prefix_shared_attention_decodes_one_position_at_a_time():
    cache = cache_of(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), torch.ones(1, 2), torch.tensor([0]),
                     torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    with pytest.raises(ValueError, match="one token per row"):
        prefix_shared_attention(SimpleNamespace(layer_idx=0), torch.zeros(1, 1, 2, 4), cache.layers[0].keys,
                                cache.layers[0].values, None, scaling=0.5, prefix_cache=cache)


def test_a_prefill_cache_keeps_each_prompt_once_and_decoding_restores_the_attention(tmp_path):
    model, _, _ = load_policy(ModelConfig(path=str(make_tiny(tmp_path / "ckpt", family="qwen2_5_vl"))))
    ids = torch.randint(3, 200, (2, 5))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).cache
    share_prompt_cache(cache, mask, reserve=4)
    repeat_cache(cache, 2, 3)
    assert all(isinstance(layer, PrefixSharedLayer) for layer in cache.layers)
    assert all(layer.prompt_keys.shape[0] == 2 and layer.owner.tolist() == [0, 0, 0, 1, 1, 1]
               for layer in cache.layers)
    config = model.config.get_text_config()
    with pytest.raises(RuntimeError, match="stop"), prefix_shared_decoding(model):
        assert config._attn_implementation == ATTENTION
        raise RuntimeError("stop")
    assert config._attn_implementation == "sdpa"
