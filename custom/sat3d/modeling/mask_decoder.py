"""Two-way-transformer mask decoder of SAT3D (3D version of SAM's mask decoder)."""

from __future__ import annotations

import torch
from monai.networks.nets.vista3d import MLP, TwoWayTransformer
from torch import nn

from .common import channel_norm
from .detail_encoder import DetailEncoder3D

__all__ = ["MaskDecoder3D"]


class MaskDecoder3D(nn.Module):
    """Predict low-resolution mask logits from an image embedding and prompt embeddings.

    A learned mask token and the sparse prompt tokens attend to the image embedding (plus the dense
    prompt embedding) in MONAI's ``TwoWayTransformer``; the updated image tokens are upsampled 4x by two
    3D transposed convolutions and multiplied with a hypernetwork output of the mask token.  A second
    token predicts the IoU of the mask (used as a quality score).

    Args:
        embed_dim: token width (384 in the paper).
        depth: two-way transformer depth.
        num_heads: attention heads.
        mlp_dim: hidden size of the transformer MLPs.
        upscale_channels: channels after the first and second transposed conv.
        iou_head_hidden: hidden width of the IoU head.
        num_mask_tokens: mask tokens taking part in attention; only the first one's mask is produced (1 for
            ours; 4 in the authors' network, which inherited SAM's multimask tokens and reads only token 0).
        upscale_norm: normalisation after the first transposed conv, ``"group"`` (ours) or ``"layer"`` (the
            authors' per-voxel channel LayerNorm).
        detail_channels: widths of a :class:`~sat3d.modeling.detail_encoder.DetailEncoder3D` whose features of
            the crop are added after each transposed conv (as SAM 2 adds high-resolution features); ``None``
            (the paper's decoder) for none.  With it, :meth:`forward` needs the crop.
        in_channels: image channels (for the detail branch).
        click_detail_channels: widths of a second :class:`~sat3d.modeling.detail_encoder.DetailEncoder3D` on
            the geodesic click maps (:func:`sat3d.modeling.geodesic.geodesic_click_maps`: where the clicked region
            extends along the image), added like the detail branch's features; ``None`` for none.  Needs a
            detail branch.  With it, :meth:`forward` needs ``click_maps``.
        geodesic: keyword arguments of :func:`~sat3d.modeling.geodesic.geodesic_click_maps` (``gamma``, ``scale``,
            ``pool``, ``iterations``) for the maps this decoder was trained with; kept here so that the
            network computes them the same way wherever it runs.
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        upscale_channels: tuple[int, int] = (96, 48),
        iou_head_hidden: int = 256,
        num_mask_tokens: int = 1,
        upscale_norm: str = "group",
        detail_channels: tuple[int, int, int] | None = None,
        in_channels: int = 1,
        click_detail_channels: tuple[int, int, int] | None = None,
        geodesic: dict | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=embed_dim, num_heads=num_heads, mlp_dim=mlp_dim)
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}.")
        self.mask_token = nn.Embedding(int(num_mask_tokens), embed_dim)
        self.iou_token = nn.Embedding(1, embed_dim)
        c1, c2 = upscale_channels
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(embed_dim, c1, kernel_size=2, stride=2),
            channel_norm(upscale_norm, c1),
            nn.GELU(),
            nn.ConvTranspose3d(c1, c2, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.detail = None if detail_channels is None else DetailEncoder3D(in_channels, detail_channels, (c1, c2))
        if click_detail_channels is not None and self.detail is None:
            raise ValueError("click_detail_channels needs a detail branch (detail_channels).")
        self.click_detail = None if click_detail_channels is None else DetailEncoder3D(2, click_detail_channels, (c1, c2))
        self.geodesic = dict(geodesic or {})
        self.hypernetwork = MLP(embed_dim, embed_dim, c2, 3)
        self.iou_head = MLP(embed_dim, iou_head_hidden, 1, 3)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
        image: torch.Tensor | None = None,
        click_maps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode.

        Args:
            image_embedding: ``(B, C, d, h, w)`` image embedding.
            image_pe: ``(1, C, d, h, w)`` positional encoding of the grid.
            sparse: ``(B, N, C)`` click embeddings (``N`` may be 0).
            dense: ``(B, C, d, h, w)`` dense prompt embedding.
            image: ``(B, C_in, 16d, 16h, 16w)`` the crop, needed (only) by a decoder with a detail branch.
            click_maps: ``(B, 2, 16d, 16h, 16w)`` positive and negative geodesic click maps, needed (only) by a
                decoder with a click branch.

        Returns:
            mask logits ``(B, 1, 4d, 4h, 4w)`` and predicted IoU ``(B, 1)``.
        """
        b = image_embedding.shape[0]
        if dense.shape != image_embedding.shape:
            raise ValueError(f"dense prompt {tuple(dense.shape)} must match the image embedding {tuple(image_embedding.shape)}.")
        out_tokens = torch.cat([self.iou_token.weight, self.mask_token.weight], dim=0)
        out_tokens = out_tokens.unsqueeze(0).expand(b, -1, -1).to(sparse.dtype)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        src = image_embedding + dense
        pos = image_pe.expand(b, -1, -1, -1, -1).to(src.dtype)
        _, _, d, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_out, mask_out = hs[:, 0, :], hs[:, 1, :]
        src = src.transpose(1, 2).reshape(b, self.embed_dim, d, h, w)
        if self.detail is None:
            upscaled = self.output_upscaling(src)
        else:
            if image is None:
                raise ValueError("this mask decoder has a detail branch and needs the image crop (pass image=...).")
            f8, f4 = self.detail(image.to(src.dtype))
            if self.click_detail is not None:
                if click_maps is None:
                    raise ValueError("this mask decoder has a click branch and needs the geodesic click maps (pass click_maps=...).")
                g8, g4 = self.click_detail(click_maps.to(src.dtype))
                f8, f4 = f8 + g8, f4 + g4
            if f8.shape[2:] != (2 * d, 2 * h, 2 * w):
                raise ValueError(f"crop {tuple(image.shape[2:])} does not fit the embedding grid {(d, h, w)} (expected 16x).")
            dc1, norm1, act1, dc2, act2 = self.output_upscaling
            upscaled = act2(dc2(act1(norm1(dc1(src) + f8))) + f4)
        hyper = self.hypernetwork(mask_out)  # (B, c2)
        logits = torch.einsum("bc,bcdhw->bdhw", hyper, upscaled).unsqueeze(1)
        return logits, self.iou_head(iou_out)
