"""SAM-style 3D prompt encoder: sparse clicks plus dense previous-mask and confidence-map prompts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.vista3d import PositionEmbeddingRandom
from torch import nn

from .common import channel_norm

__all__ = ["PromptEncoder3D", "DenseBranch", "PaperPositionEmbedding"]


class PaperPositionEmbedding(nn.Module):
    """The authors' random-Fourier positional encoding (only for their weights, preset ``sat3d_paper``).

    A ``(3, E/3)`` Gaussian matrix and ``[sin, cos, sin]`` features of width E.  Clicks map axis 0, 1, 2 to
    the matrix rows 0, 1, 2, but the dense grid is stacked (dim 1, dim 0, dim 2): the first two axes are
    swapped between clicks and image, exactly as in their code (so their weights expect it).

    Args:
        embed_dim: width E of the encoding (divisible by 3).
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 3:
            raise ValueError(f"the paper's positional encoding needs embed_dim divisible by 3, got {embed_dim}.")
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((3, embed_dim // 3)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def forward(self, size: Sequence[int]) -> torch.Tensor:
        """``(E, d, h, w)`` encoding of the token grid (centres ``(index + 0.5) / size``)."""
        d, h, w = (int(s) for s in size)
        grid = torch.ones((d, h, w), device=self.positional_encoding_gaussian_matrix.device)
        e0 = (grid.cumsum(0) - 0.5) / d
        e1 = (grid.cumsum(1) - 0.5) / h
        e2 = (grid.cumsum(2) - 0.5) / w
        return self._pe_encoding(torch.stack([e1, e0, e2], dim=-1)).permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """``(B, N, 3)`` coordinates in voxels of a crop of ``image_size`` -> ``(B, N, E)``."""
        scale = torch.as_tensor([float(s) for s in image_size], device=coords.device)
        return self._pe_encoding(coords.float() / scale)


class DenseBranch(nn.Module):
    """Small conv branch that downscales a one-channel map by 4 (two stride-2 convs) to ``out_channels``.

    Args:
        out_channels: channels of the produced dense embedding.
        hidden: channels of the two intermediate convs.
        norm: ``"group"`` (ours) or ``"layer"`` (per-voxel channel LayerNorm, the authors').
    """

    def __init__(self, out_channels: int, hidden: Sequence[int] = (4, 16), norm: str = "group") -> None:
        super().__init__()
        h1, h2 = hidden
        self.net = nn.Sequential(
            nn.Conv3d(1, h1, kernel_size=2, stride=2),
            channel_norm(norm, h1),
            nn.GELU(),
            nn.Conv3d(h1, h2, kernel_size=2, stride=2),
            channel_norm(norm, h2),
            nn.GELU(),
            nn.Conv3d(h2, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 4d, 4h, 4w)`` map -> ``(B, out_channels, d, h, w)``."""
        return self.net(x)


class PromptEncoder3D(nn.Module):
    """Encode clicks, a previous mask and a confidence map for the mask decoder.

    Sparse prompts are clicks in crop voxel coordinates, encoded with random-Fourier features
    (MONAI's ``PositionEmbeddingRandom``) plus a learned embedding per click type.  Padding entries
    (label ``-1``) receive the learned "not a point" embedding.  Dense prompts are the previous mask
    probability and the critic's confidence map, each downscaled by its own :class:`DenseBranch` to half
    the embedding width and concatenated.  Missing dense prompts use learned "no mask" / "no confidence"
    embeddings, so calling with no prompt at all is the automatic mode.

    Args:
        embed_dim: width of the prompt embeddings (equals the image-embedding width).
        embedding_size: token grid of the image embedding, e.g. ``(8, 8, 8)``.
        input_size: crop size the clicks refer to, e.g. ``(128, 128, 128)``.
        mask_in_chans: hidden channels of the dense branches.
        positional_encoding: ``"monai"`` (MONAI's ``PositionEmbeddingRandom``, ours) or ``"paper"``
            (:class:`PaperPositionEmbedding`, only for the authors' weights).
        dense_norm: normalisation in the dense branches, ``"group"`` or ``"layer"`` (see :class:`DenseBranch`).
    """

    def __init__(
        self,
        embed_dim: int = 384,
        embedding_size: Sequence[int] = (8, 8, 8),
        input_size: Sequence[int] = (128, 128, 128),
        mask_in_chans: Sequence[int] = (4, 16),
        positional_encoding: str = "monai",
        dense_norm: str = "group",
    ) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {embed_dim}.")
        self.embed_dim = embed_dim
        self.embedding_size = tuple(int(s) for s in embedding_size)
        self.input_size = tuple(int(s) for s in input_size)
        self.mask_input_size = tuple(4 * s for s in self.embedding_size)
        if positional_encoding == "monai":
            self.pe_layer: nn.Module = PositionEmbeddingRandom(embed_dim // 2)
        elif positional_encoding == "paper":
            self.pe_layer = PaperPositionEmbedding(embed_dim)
        else:
            raise ValueError(f"unknown positional_encoding {positional_encoding!r}; choose 'monai' or 'paper'.")
        # index 0: negative click, index 1: positive click
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(2)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        half = embed_dim // 2
        self.mask_branch = DenseBranch(half, mask_in_chans, dense_norm)
        self.confidence_branch = DenseBranch(embed_dim - half, mask_in_chans, dense_norm)
        self.no_mask_embed = nn.Embedding(1, half)
        self.no_confidence_embed = nn.Embedding(1, embed_dim - half)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid, ``(1, embed_dim, d, h, w)``."""
        return self.pe_layer(self.embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
        coords = points.to(torch.float32) + 0.5  # voxel centres
        pe = self.pe_layer.forward_with_coords(coords, tuple(input_size))
        pe = pe.to(self.point_embeddings[0].weight.dtype)
        labels = labels.unsqueeze(-1)
        pe = torch.where(labels < 0, torch.zeros_like(pe), pe)
        pe = pe + (labels < 0) * self.not_a_point_embed.weight
        pe = pe + (labels == 0) * self.point_embeddings[0].weight
        pe = pe + (labels == 1) * self.point_embeddings[1].weight
        return pe

    def _dense(self, branch: DenseBranch, x: torch.Tensor | None, empty: nn.Embedding, b: int) -> torch.Tensor:
        if x is None:
            return empty.weight.reshape(1, -1, 1, 1, 1).expand(b, -1, *self.embedding_size)
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"dense prompts must be (B, 1, D, H, W), got shape {tuple(x.shape)}.")
        if tuple(x.shape[2:]) != self.mask_input_size:
            x = F.interpolate(x.float(), size=self.mask_input_size, mode="trilinear", align_corners=False)
        return branch(x.to(empty.weight.dtype))

    def forward(
        self,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        confidence: torch.Tensor | None = None,
        batch_size: int | None = None,
        input_size: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts.

        Args:
            points: ``(B, N, 3)`` click coordinates in crop voxels (index order of the crop's axes).
            point_labels: ``(B, N)`` with 1 = positive, 0 = negative, -1 = padding.
            prev_mask: ``(B, 1, D, H, W)`` previous mask probability in [0, 1], any size (resampled to 4x the
                embedding grid).
            confidence: ``(B, 1, D, H, W)`` critic confidence in [0, 1], any size.
            batch_size: batch size when no prompt is given.
            input_size: crop size the clicks refer to (default: ``input_size`` of the constructor).

        Returns:
            sparse ``(B, N, embed_dim)`` (``N = 0`` without clicks) and dense ``(B, embed_dim, d, h, w)``.
        """
        b = next((int(t.shape[0]) for t in (points, prev_mask, confidence) if t is not None), int(batch_size or 1))
        device = self.no_mask_embed.weight.device
        if points is not None and points.shape[1] > 0:
            if point_labels is None:
                raise ValueError("point_labels are required when points are given.")
            if points.ndim != 3 or points.shape[-1] != 3 or point_labels.shape != points.shape[:2]:
                raise ValueError(
                    f"points must be (B, N, 3) and point_labels (B, N); got {tuple(points.shape)} and "
                    f"{tuple(point_labels.shape)}."
                )
            sparse = self._embed_points(points, point_labels, input_size or self.input_size)
        else:
            sparse = torch.zeros((b, 0, self.embed_dim), device=device, dtype=self.no_mask_embed.weight.dtype)
        dense = torch.cat(
            [
                self._dense(self.mask_branch, prev_mask, self.no_mask_embed, b),
                self._dense(self.confidence_branch, confidence, self.no_confidence_embed, b),
            ],
            dim=1,
        )
        return sparse, dense

