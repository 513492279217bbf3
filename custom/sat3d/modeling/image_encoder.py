"""3D Swin-transformer image encoder of SAT3D.

Built from MONAI's Swin pieces (:class:`~monai.networks.blocks.PatchEmbed`,
:class:`~monai.networks.nets.swin_unetr.BasicLayer` and
:class:`~monai.networks.nets.swin_unetr.PatchMergingV2`).  ``PatchMergingV2`` is used on purpose:
it concatenates all eight voxels of every 2x2x2 neighbourhood, whereas the legacy ``PatchMerging``
(and the authors' public code) repeats some sub-grids and drops half of the voxels.
:class:`PaperPatchMerging` reproduces the authors' merging exactly; it exists only to run their published
weights (the ``sat3d_paper`` preset).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from monai.networks.blocks import PatchEmbed
from monai.networks.nets.swin_unetr import BasicLayer, PatchMergingV2
from torch import nn

from .window_attention import CachedMaskBasicLayer

__all__ = ["SwinImageEncoder3D", "PaperPatchMerging"]

#: the four (d, h, w) offsets of a 2x2x2 neighbourhood that the authors' patch merging keeps, in their order
PAPER_MERGING_OFFSETS = ((0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1))

_ACCEPTS_FLASH = "use_flash_attention" in inspect.signature(BasicLayer.__init__).parameters


class PaperPatchMerging(nn.Module):
    """The authors' 3D patch merging: 4 of the 8 voxels of each 2x2x2 neighbourhood, LayerNorm(4C), Linear(4C, 2C).

    Half of the voxels never reach the next stage; this is a known defect of the public code, kept only so
    that their trained weights compute what they were trained to compute.

    Args:
        dim: channels C of the input.
        norm_layer: normalisation of the concatenated ``4C`` features.
        spatial_dims: must be 3.
    """

    def __init__(self, dim: int, norm_layer: type[nn.LayerNorm] = nn.LayerNorm, spatial_dims: int = 3) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"PaperPatchMerging is 3D only, got spatial_dims={spatial_dims}.")
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W, C)`` (even D, H, W) -> ``(B, D/2, H/2, W/2, 2C)``."""
        if x.ndim != 5 or any(s % 2 for s in x.shape[1:4]):
            raise ValueError(f"expected (B, D, H, W, C) with even D, H, W, got {tuple(x.shape)}.")
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in PAPER_MERGING_OFFSETS], -1)
        return self.reduction(self.norm(x))


class SwinImageEncoder3D(nn.Module):
    """Hierarchical 3D Swin encoder that maps a crop to a coarse image embedding.

    With the paper's settings (patch 2, embed dim 48, depths ``[2, 2, 2, 1]``, heads ``[3, 6, 12, 24]``,
    window 8) a ``(B, 1, 128, 128, 128)`` crop becomes a ``(B, 384, 8, 8, 8)`` embedding: the first three
    stages end in a patch merging that halves the grid and doubles the channels, the last stage keeps them.

    Args:
        in_channels: number of image channels.
        embed_dim: channels after the patch embedding.
        depths: number of Swin blocks per stage.
        num_heads: attention heads per stage; ``embed_dim * 2**i`` must be divisible by ``num_heads[i]``.
        window_size: attention window edge (voxels of the token grid).
        patch_size: edge of the patch embedding.
        mlp_ratio: hidden size of the block MLPs relative to their width.
        drop_path_rate: stochastic depth rate, increasing linearly over the blocks.
        use_checkpoint: gradient checkpointing in the Swin blocks (saves training memory).
        use_flash_attention: use ``scaled_dot_product_attention`` when autograd is off (inference); only used by
            MONAI's attention, i.e. when ``fast_attention`` is false.
        fast_attention: use :class:`~sat3d.modeling.window_attention.CachedMaskBasicLayer` (cached shift masks,
            windows grouped by mask form); same parameters as MONAI's layers.
        merging: ``"v2"`` (MONAI's ``PatchMergingV2``: all 8 voxels) or ``"paper"`` (:class:`PaperPatchMerging`,
            only for the authors' weights).

    Raises:
        ValueError: if the stage lists have different lengths or a width is not divisible by its heads.
    """

    def __init__(
        self,
        in_channels: int = 1,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 1),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 8,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        use_flash_attention: bool = True,
        fast_attention: bool = True,
        merging: str = "v2",
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads) or len(depths) < 1:
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must be non-empty and equally long.")
        n_stages = len(depths)
        mergings = {"v2": PatchMergingV2, "paper": PaperPatchMerging}
        if merging not in mergings:
            raise ValueError(f"unknown merging {merging!r}; choose one of {sorted(mergings)}.")
        for i, heads in enumerate(num_heads):
            width = embed_dim * 2**i
            if width % heads:
                raise ValueError(f"stage {i}: width {width} is not divisible by {heads} heads.")
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.out_channels = embed_dim * 2 ** (n_stages - 1)
        #: total downsampling factor between the crop and the embedding grid.
        self.stride = self.patch_size * 2 ** (n_stages - 1)
        self.patch_embed = PatchEmbed(
            patch_size=patch_size, in_chans=in_channels, embed_dim=embed_dim, norm_layer=nn.LayerNorm, spatial_dims=3
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        # MONAI < 1.6 has no use_flash_attention (its attention then runs the plain way; ours always uses SDPA)
        flash = {"use_flash_attention": use_flash_attention} if _ACCEPTS_FLASH else {}
        self.stages = nn.ModuleList()
        for i in range(n_stages):
            self.stages.append(
                (CachedMaskBasicLayer if fast_attention else BasicLayer)(
                    dim=embed_dim * 2**i,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=(window_size,) * 3,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    downsample=mergings[merging] if i < n_stages - 1 else None,
                    use_checkpoint=use_checkpoint,
                    **flash,
                )
            )
        self.norm = nn.LayerNorm(self.out_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Encode a crop.

        Args:
            image: ``(B, C, D, H, W)`` crop; each spatial size must be a multiple of :attr:`stride`.

        Returns:
            ``(B, out_channels, D/stride, H/stride, W/stride)`` embedding.
        """
        if image.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) crop, got shape {tuple(image.shape)}.")
        bad = [s for s in image.shape[2:] if s % self.stride]
        if bad:
            raise ValueError(f"crop size {tuple(image.shape[2:])} must be a multiple of the encoder stride {self.stride}.")
        x = self.patch_embed(image)
        for stage in self.stages:
            x = stage(x.contiguous())
        x = x.permute(0, 2, 3, 4, 1)
        x = self.norm(x)
        return x.permute(0, 4, 1, 2, 3).contiguous()
