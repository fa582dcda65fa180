"""Exact, faster stand-ins for transformers modules, applied to a loaded model in place.

Qwen-VL vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5) embed patches with a ``Conv3d`` whose kernel equals
its stride and whose input is exactly one kernel per row: ``[N, C, T, P, P] -> [N, D, 1, 1, 1]``. That is a matrix
product ``x.reshape(N, C*T*P*P) @ W.reshape(D, -1)^T + b``; as a convolution it took ~0.24 s forward and ~0.18 s
backward for 4 images of 448x448 on one CPU core (mkldnn), as a matmul ~10 ms each way, a quarter of the vision
tower's cost (``benchmarks/RESULTS.md``, issue 22).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PatchConv3d(torch.nn.Conv3d):
    """``Conv3d`` that computes a one-kernel-per-row input (the patch embedding's only use) as a matmul, and any
    other input as a convolution. Same parameters and state-dict keys as the ``Conv3d`` it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[2:]) != self.kernel_size:
            return super().forward(x)
        out = F.linear(x.reshape(len(x), -1), self.weight.reshape(self.out_channels, -1), self.bias)
        return out.view(len(x), self.out_channels, 1, 1, 1)


def is_patch_conv(module: torch.nn.Module) -> bool:
    """A plain ``Conv3d`` that tiles its input: stride equal to the kernel, no padding, dilation or groups."""
    return (type(module) is torch.nn.Conv3d and module.stride == module.kernel_size and module.groups == 1
            and module.dilation == (1, 1, 1) and module.padding in ((0, 0, 0), "valid")
            and module.padding_mode == "zeros")


def use_fast_kernels(model: torch.nn.Module) -> int:
    """Turn every patch-embedding ``Conv3d`` of ``model`` into a ``PatchConv3d`` (same object and parameters, so
    optimizers, peft and checkpoints see no difference); returns how many were changed."""
    convs = [m for m in model.modules() if is_patch_conv(m)]
    for m in convs:
        m.__class__ = PatchConv3d
    return len(convs)
