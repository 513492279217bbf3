"""Faster shifted-window attention for MONAI's Swin blocks.

MONAI's ``WindowAttention`` materialises a ``(windows x heads x n x n)`` bias for shifted windows and its
``BasicLayer`` rebuilds the shift mask on every call; at 128^3 that is gigabytes of memory traffic per
block.  A shifted-window mask, however, takes at most eight distinct forms (interior windows and the
windows on the wrapped border of each axis).  The classes here cache the mask per grid size, group the
windows by mask form and run ``scaled_dot_product_attention`` once per group with a small broadcast bias.
Results equal MONAI's up to float rounding; the parameters and their names are unchanged, so weights are
interchangeable.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.nets.swin_unetr import BasicLayer, WindowAttention, compute_mask, get_window_size

__all__ = ["GroupedWindowAttention", "CachedMaskBasicLayer", "MaskForms"]


class GroupedWindowAttention(WindowAttention):
    """``WindowAttention`` that runs windows grouped by their shift-mask form (same parameters).

    The forms of a mask come from ``mask_forms`` (a lookup its :class:`CachedMaskBasicLayer` shares), or are
    computed on the call when it is not given.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mask_forms: MaskForms | None = None

    @classmethod
    def like(cls, attn: WindowAttention) -> "GroupedWindowAttention":
        """A :class:`GroupedWindowAttention` with ``attn``'s settings and its very parameters and buffers."""
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in attn.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(attn._parameters)
        new._buffers = dict(attn._buffers)
        new._modules = dict(attn._modules)
        new.mask_forms = None
        return new

    def _bias(self, n: int) -> torch.Tensor:
        table = self.relative_position_bias_table
        idx = self.relative_position_index[:n, :n].reshape(-1)  # type: ignore[index]
        # contiguous: SDPA's fused kernels need a mask whose last dimension has stride 1, and after the permute
        # it has stride heads (the math fallback made the encoder three times slower on an H100)
        return table[idx].reshape(n, n, -1).permute(2, 0, 1).contiguous()

    def _attend(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop.p if self.training else 0.0
        # the mask in the queries' dtype: under a GPU's autocast qkv is bf16 while x (and so the bias) is fp32,
        # and SDPA's fused kernels take no mask of another dtype
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias.to(qkv.dtype), dropout_p=drop,
                                             scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        b, n, c = x.shape
        bias = self._bias(n).unsqueeze(0).to(x.dtype)  # (1, heads, n, n)
        if mask is None:
            return self._attend(x, bias)
        forms, form_of_window = self.mask_forms(mask) if self.mask_forms is not None else _mask_forms(mask)
        window_form = form_of_window.repeat(b // mask.shape[0])
        out = None
        for f in range(forms.shape[0]):
            idx = (window_form == f).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            part = self._attend(x[idx], bias + forms[f].to(x.dtype))
            if out is None:
                out = part.new_empty((b, n, part.shape[-1]))
            out = out.index_copy(0, idx, part) if torch.is_grad_enabled() else out.index_copy_(0, idx, part)
        return out


def _mask_forms(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct forms of a ``(windows, n, n)`` shift mask and the form of each window."""
    forms, inverse = torch.unique(mask.flatten(1), dim=0, return_inverse=True)
    return forms.view(-1, *mask.shape[1:]), inverse


class MaskForms:
    """The forms of the shift masks a layer caches, looked up by the mask object the layer hands its blocks."""

    def __init__(self) -> None:
        self._forms: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    def add(self, mask: torch.Tensor) -> None:
        self._forms[id(mask)] = (mask, _mask_forms(mask))  # keeps the mask alive, so its id stays its own

    def clear(self) -> None:
        self._forms.clear()

    def __call__(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._forms.get(id(mask))
        return hit[1] if hit is not None and hit[0] is mask else _mask_forms(mask)


class CachedMaskBasicLayer(BasicLayer):
    """MONAI ``BasicLayer`` that caches the shift mask per grid size and uses :class:`GroupedWindowAttention`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._masks: dict[tuple, torch.Tensor] = {}
        self._forms = MaskForms()
        for blk in self.blocks:  # our attention module in MONAI's block, holding the same parameter objects
            blk.attn = GroupedWindowAttention.like(blk.attn)
            blk.attn.mask_forms = self._forms

    def _mask(self, dims: tuple[int, int, int], window_size, shift_size, device) -> torch.Tensor:
        key = (dims, tuple(window_size), tuple(shift_size), str(device))
        if key not in self._masks:
            if len(self._masks) > 8:
                self._masks.clear()
                self._forms.clear()
            self._masks[key] = compute_mask(list(dims), window_size, shift_size, device)
            self._forms.add(self._masks[key])
        return self._masks[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, D, H, W) tokens, got shape {tuple(x.shape)}.")
        b, _, d, h, w = x.shape
        window_size, shift_size = get_window_size((d, h, w), self.window_size, self.shift_size)
        x = rearrange(x, "b c d h w -> b d h w c")
        dims = tuple(int(np.ceil(s / ws)) * ws for s, ws in zip((d, h, w), window_size))
        attn_mask = self._mask(dims, window_size, shift_size, x.device)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        x = x.view(b, d, h, w, -1)
        if self.downsample is not None:
            x = self.downsample(x)
        return rearrange(x, "b d h w c -> b c d h w")
