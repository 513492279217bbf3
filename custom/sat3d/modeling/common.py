"""Small layers shared by the SAT3D parts."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LayerNorm3d", "channel_norm", "conv_block"]


class LayerNorm3d(nn.Module):
    """LayerNorm over the channels of every voxel of a ``(B, C, D, H, W)`` tensor (SAM's ``LayerNorm2d`` in 3D).

    Args:
        num_channels: C.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> same shape, normalised over C."""
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


def channel_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation of a conv feature map: ``"group"`` (one group over channels and voxels, ours) or
    ``"layer"`` (:class:`LayerNorm3d`, per voxel over channels, the authors' choice)."""
    if kind == "group":
        return nn.GroupNorm(1, channels)
    if kind == "layer":
        return LayerNorm3d(channels)
    raise ValueError(f"unknown norm {kind!r}; choose 'group' or 'layer'.")


def conv_block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3x3 convolution (padding keeps the size, divided by ``stride``), one-group GroupNorm and GELU."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
                         channel_norm("group", cout), nn.GELU())
