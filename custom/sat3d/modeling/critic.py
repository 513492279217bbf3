"""Voxel-wise critic (discriminator) of SAT3D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Critic3D"]


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=dilation, dilation=dilation),
        nn.GroupNorm(min(8, cout), cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


class Critic3D(nn.Module):
    """Judge, voxel by voxel, whether a mask looks like a real annotation of the image.

    The critic sees the image crop and a mask probability (2 channels).  Unlike the authors' 1x1x1
    version it uses 3x3x3 convolutions, two stride-2 downsamplings and dilated convolutions, giving a
    receptive field of several centimetres, and GroupNorm instead of BatchNorm so that it behaves the
    same in training and inference.  Its output, upsampled to the crop, is a confidence map in [0, 1]:
    high where the mask looks right, low where it looks wrong.

    ``design="paper"`` builds the authors' critic instead, only to run their published weights: four
    ``1x1x1`` convs without bias, each followed by BatchNorm and LeakyReLU(0.2), widths 1-16-32-64-1, on the
    mask probability alone (the image is ignored).  It judges every voxel by its own probability only, and
    its BatchNorm makes the output depend on train/eval mode.

    Args:
        in_channels: image channels (the mask adds one more).
        channels: widths of the full-, half- and quarter-resolution stages (``"paper"``: of its hidden layers).
        dilations: dilations of the context convs at quarter resolution (unused by ``"paper"``).
        design: ``"sat3d"`` (ours) or ``"paper"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32),
        dilations: Sequence[int] = (1, 2, 4),
        design: str = "sat3d",
    ) -> None:
        super().__init__()
        self.design = design
        if design == "sat3d":
            c0, c1, c2 = channels
            layers = [_block(in_channels + 1, c0, stride=2), _block(c0, c1, stride=2), _block(c1, c2)]
            layers += [_block(c2, c2, dilation=d) for d in dilations]
            self.body = nn.Sequential(*layers)
            self.head: nn.Module = nn.Conv3d(c2, 1, kernel_size=1)
        elif design == "paper":
            widths = [1, *channels, 1]
            self.body = nn.Sequential(
                *[
                    nn.Sequential(nn.Conv3d(a, b, kernel_size=1, bias=False), nn.BatchNorm3d(b), nn.LeakyReLU(0.2))
                    for a, b in zip(widths[:-1], widths[1:])
                ]
            )
            self.head = nn.Identity()
        else:
            raise ValueError(f"unknown critic design {design!r}; choose 'sat3d' or 'paper'.")

    @property
    def voxelwise(self) -> bool:
        """Whether each output voxel depends only on the same voxel's mask probability (the paper design)."""
        return self.design == "paper"

    def forward_logits(self, image: torch.Tensor, mask_prob: torch.Tensor) -> torch.Tensor:
        """Critic logits at the crop size.

        Args:
            image: ``(B, C, D, H, W)`` normalised image crop.
            mask_prob: ``(B, 1, D, H, W)`` mask probability in [0, 1] (prediction or ground truth).

        Returns:
            ``(B, 1, D, H, W)`` logits; ``sigmoid`` gives the confidence.
        """
        if image.shape[2:] != mask_prob.shape[2:] or image.shape[0] != mask_prob.shape[0]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask_prob.shape)} must share batch and size.")
        if self.design == "paper":
            return self.body(mask_prob.to(image.dtype))
        x = torch.cat([image, mask_prob.to(image.dtype)], dim=1)
        logits = self.head(self.body(x))
        return F.interpolate(logits, size=image.shape[2:], mode="trilinear", align_corners=False)

    def forward(self, image: torch.Tensor, mask_prob: torch.Tensor) -> torch.Tensor:
        """Confidence map ``(B, 1, D, H, W)`` in [0, 1]; see :meth:`forward_logits`."""
        return torch.sigmoid(self.forward_logits(image, mask_prob))
