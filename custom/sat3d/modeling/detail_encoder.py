"""Shallow convolutional detail features of the crop for the mask decoder (``sat3d_detail`` preset).

The paper's decoder upsamples the 16x-downsampled image embedding by two transposed convolutions only, so
its masks can follow image edges no finer than the embedding's tokens (24 mm cubes at 1.5 mm spacing);
SAM 2 adds high-resolution backbone features into the same upsampling path for this reason.  Our Swin
encoder's early stages are not kept with the cached embedding, so this small strided-conv stem recomputes
comparable features from the crop itself (about 0.1 GMAC per 64³ crop, against 8 GMAC for the encoder).
It is not part of the paper's network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import conv_block

__all__ = ["DetailEncoder3D"]


class DetailEncoder3D(nn.Module):
    """Three stride-2 3x3x3 convolutions; features at 1/8 and 1/4 of the crop, projected to the widths of
    the decoder's two upsampling steps.

    The projections start at zero, so a decoder with this branch computes exactly what it computed without
    it until training moves them (which is what lets a ``sat3d_detail`` network fine-tune from
    ``sat3d_base`` weights).

    Args:
        in_channels: image channels.
        channels: widths of the three convolutions (at 1/2, 1/4 and 1/8 of the crop).
        out_channels: widths of the decoder after its first and second transposed conv (``upscale_channels``).
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64),
                 out_channels: Sequence[int] = (96, 48)) -> None:
        super().__init__()
        if len(channels) != 3 or len(out_channels) != 2:
            raise ValueError(f"channels needs 3 widths and out_channels 2, got {list(channels)} and {list(out_channels)}.")
        c0, c1, c2 = (int(c) for c in channels)

        self.down2 = conv_block(in_channels, c0, stride=2)
        self.down4 = conv_block(c0, c1, stride=2)
        self.down8 = conv_block(c1, c2, stride=2)
        self.proj8 = nn.Conv3d(c2, int(out_channels[0]), 1)
        self.proj4 = nn.Conv3d(c1, int(out_channels[1]), 1)
        for proj in (self.proj8, self.proj4):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, D, H, W)`` crop (sizes divisible by 8) -> ``(B, out_channels[0], D/8, H/8, W/8)`` and
        ``(B, out_channels[1], D/4, H/4, W/4)``."""
        if image.ndim != 5 or any(s % 8 for s in image.shape[2:]):
            raise ValueError(f"expected a (B, C, D, H, W) crop with sizes divisible by 8, got {tuple(image.shape)}.")
        x4 = self.down4(self.down2(image))
        x8 = self.down8(x4)
        return self.proj8(x8), self.proj4(x4)
