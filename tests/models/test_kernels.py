"""``mmrl.models.kernels``: the patch-embedding convolution as a matmul, equal to ``Conv3d`` in values and
gradients, on random tensors and inside every Qwen family's vision tower."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForImageTextToText

from mmrl.models.kernels import PatchConv3d, is_patch_conv, use_fast_kernels
from mmrl.models.load import vision_tower
from mmrl.models.tiny import make_tiny


def conv_and_twin(bias: bool):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 16, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=bias)
    twin = copy.deepcopy(conv)
    assert use_fast_kernels(twin) == 1 and type(twin) is PatchConv3d
    return conv, twin


@pytest.mark.parametrize("bias", [False, True])
def test_patch_conv_equals_conv3d_in_values_and_gradients(bias):
    conv, twin = conv_and_twin(bias)
    x = torch.randn(37, 3, 2, 14, 14, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    grad = torch.randn(37, 16, 1, 1, 1)
    out, out2 = conv(x), twin(x2)
    assert out2.shape == out.shape == (37, 16, 1, 1, 1)
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)
    out.backward(grad)
    out2.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-5)
    for p, p2 in zip(conv.parameters(), twin.parameters()):
        torch.testing.assert_close(p2.grad, p.grad, atol=1e-4, rtol=1e-5)


def test_other_inputs_still_convolve():
    conv, twin = conv_and_twin(True)
    x = torch.randn(2, 3, 4, 28, 42)  # several kernels per input: a real convolution
    torch.testing.assert_close(twin(x), conv(x))
    assert twin(x).shape == (2, 16, 2, 2, 3)


def test_only_tiling_convolutions_are_replaced():
    tiling = torch.nn.Conv3d(3, 8, kernel_size=2, stride=2, bias=False)
    assert is_patch_conv(tiling)
    assert not is_patch_conv(torch.nn.Conv3d(3, 8, kernel_size=2, stride=1))
    assert not is_patch_conv(torch.nn.Conv3d(3, 8, kernel_size=2, stride=2, padding=1))
    assert not is_patch_conv(torch.nn.Conv3d(4, 8, kernel_size=2, stride=2, groups=2))
    assert not is_patch_conv(torch.nn.Conv2d(3, 8, kernel_size=2, stride=2))
    model = torch.nn.Sequential(tiling, torch.nn.Conv3d(3, 8, kernel_size=3))
    keys = list(model.state_dict())
    assert use_fast_kernels(model) == 1
    assert [type(m) for m in model] == [PatchConv3d, torch.nn.Conv3d]
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_vision_tower_features_unchanged(tmp_path, family):
    make_tiny(tmp_path / "m", family=family, size="tiny")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    fast = copy.deepcopy(model)
    assert use_fast_kernels(fast) == 1
    patch = vision_tower(model).patch_embed
    torch.manual_seed(0)
    pixels = torch.randn(2 * 4 * 4, patch.in_channels * patch.temporal_patch_size * patch.patch_size ** 2)
    torch.testing.assert_close(vision_tower(fast).patch_embed(pixels), patch(pixels), atol=1e-5, rtol=1e-5)
