"""A convolutional head for the automatic mode (no prompt at all) of SAT3D (``sat3d_auto`` preset).

One decoder serves both modes in the paper: with no prompt it must find every tumour of a window, with
clicks it must follow the clicked object.  On the project's compute the two competed: every run that made
clicks follow lesions better lost the automatic mode (model card, runs 20-23).  VISTA3D separates the two
the same way: an automatic branch and an interactive branch share one image encoder.  This head is used
only when a window gets no prompt; it reads the crop, the image embedding and the decoder's own automatic
logits and adds a correction to those logits (and to the predicted IoU).  Its output layers start at zero,
so a network with the head computes exactly what it computed without it until the head is trained; the
click path never passes through it.  Not part of the paper's network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_block

__all__ = ["AutoHead3D"]


class AutoHead3D(nn.Module):
    """Correction of the automatic mode's low-resolution logits.

    The crop passes two stride-2 convolutions (to the decoder's output grid, 1/4 of the crop; ``image_blocks``
    adds convolutions at each level); the image
    embedding is projected and upsampled to that grid; both are concatenated with the decoder's automatic
    mask probability and pass convolutions with growing dilation.  A zero-initialised 1x1x1 convolution
    gives the logit correction, a zero-initialised linear layer on the pooled features the IoU correction.

    Args:
        in_channels: image channels.
        embed_dim: width of the image embedding.
        image_channels: widths of the two stride-2 convolutions on the crop.
        embed_channels: width the embedding is projected to.
        channels: width of the head's convolutions.
        dilations: dilation of each of the head's 3x3x3 convolutions.
        image_blocks: convolutions per level of the crop's path (at 1/2 and 1/4 of the crop; the first of each
            has stride 2).  With 1 the crop passes two convolutions only, and every cell of the logits' grid
            sees about 10 mm of the image before the head's body.
    """

    def __init__(self, in_channels: int = 1, embed_dim: int = 384, image_channels: Sequence[int] = (16, 32),
                 embed_channels: int = 64, channels: int = 64, dilations: Sequence[int] = (1, 2, 4),
                 image_blocks: int = 1) -> None:
        super().__init__()
        if len(image_channels) != 2 or not dilations or int(image_blocks) < 1:
            raise ValueError(f"image_channels needs 2 widths, dilations at least one and image_blocks at least 1, got "
                             f"{list(image_channels)}, {list(dilations)} and {image_blocks}.")
        c0, c1 = (int(c) for c in image_channels)
        extra = int(image_blocks) - 1
        self.image = nn.Sequential(conv_block(in_channels, c0, stride=2), *[conv_block(c0, c0) for _ in range(extra)],
                                   conv_block(c0, c1, stride=2), *[conv_block(c1, c1) for _ in range(extra)])
        self.embed = nn.Conv3d(embed_dim, int(embed_channels), 1)
        widths = [c1 + int(embed_channels) + 1] + [int(channels)] * len(dilations)
        self.body = nn.Sequential(*[conv_block(widths[i], widths[i + 1], dilation=int(d)) for i, d in enumerate(dilations)])
        self.out = nn.Conv3d(int(channels), 1, 1)
        self.iou = nn.Linear(int(channels), 1)
        for layer in (self.out, self.iou):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor, low_res_logits: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrections of the automatic mode.

        Args:
            image: ``(B, C, D, H, W)`` the crop.
            embedding: ``(B, E, d, h, w)`` its image embedding.
            low_res_logits: ``(B, 1, D/4, H/4, W/4)`` the decoder's automatic logits.

        Returns:
            ``(B, 1, D/4, H/4, W/4)`` to add to the logits and ``(B, 1)`` to add to the predicted IoU.
        """
        grid = tuple(low_res_logits.shape[2:])
        if image.ndim != 5 or tuple(s // 4 for s in image.shape[2:]) != grid or any(s % 4 for s in image.shape[2:]):
            raise ValueError(f"the crop {tuple(image.shape)} must be 4x the logits' grid {grid}.")
        f = self.image(image.to(low_res_logits.dtype))
        e = F.interpolate(self.embed(embedding.to(low_res_logits.dtype)), size=grid, mode="trilinear", align_corners=False)
        h = self.body(torch.cat([f, e, torch.sigmoid(low_res_logits)], 1))
        return self.out(h), self.iou(h.mean(dim=(2, 3, 4)))
