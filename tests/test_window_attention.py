"""The grouped shifted-window attention must compute exactly what MONAI's WindowAttention computes."""

from __future__ import annotations

import inspect

import pytest
import torch
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask
from sat3d.modeling import SwinImageEncoder3D
from sat3d.modeling.window_attention import CachedMaskBasicLayer, GroupedWindowAttention


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_grouped_attention_equals_monai(shifted, grad):
    torch.manual_seed(0)
    flash = {"use_flash_attention": True} if "use_flash_attention" in inspect.signature(WindowAttention).parameters else {}
    ref = WindowAttention(24, 3, (4, 4, 4), qkv_bias=True, **flash)  # MONAI < 1.6 has no flash option
    torch.nn.init.normal_(ref.relative_position_bias_table, std=1.0)  # make the bias matter
    fast = GroupedWindowAttention(24, 3, (4, 4, 4), qkv_bias=True)
    fast.load_state_dict(ref.state_dict())
    mask = compute_mask([8, 12, 8], (4, 4, 4), (2, 2, 2), "cpu") if shifted else None
    x = torch.randn(2 * 12, 64, 24, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        a, b = ref(x, mask), fast(x, mask)
    assert torch.allclose(a, b, atol=1e-5)
    if grad:
        w = torch.randn_like(a)
        ga = torch.autograd.grad((a * w).sum(), x)[0]
        gb = torch.autograd.grad((b * w).sum(), x)[0]
        assert torch.allclose(ga, gb, atol=1e-5)


def test_encoder_with_fast_layers_equals_monai_layers():
    torch.manual_seed(1)
    fast = SwinImageEncoder3D(embed_dim=12, depths=(2, 2), num_heads=(2, 4), window_size=4, fast_attention=True).eval()
    ref = SwinImageEncoder3D(embed_dim=12, depths=(2, 2), num_heads=(2, 4), window_size=4, fast_attention=False).eval()
    assert isinstance(fast.stages[0], CachedMaskBasicLayer) and not isinstance(ref.stages[0], CachedMaskBasicLayer)
    for name, p in fast.named_parameters():
        if "relative_position_bias_table" in name:
            torch.nn.init.normal_(p, std=1.0)
    ref.load_state_dict(fast.state_dict())  # same parameter names: weights are interchangeable
    x = torch.randn(1, 1, 32, 24, 40)
    with torch.no_grad():
        assert torch.allclose(fast(x), ref(x), atol=1e-4)
        assert torch.allclose(fast(x), ref(x), atol=1e-4)  # second call uses the cached mask


def test_layer_swaps_in_our_module_with_the_same_parameters_and_caches_forms_without_tensor_attributes():
    """No ``__class__`` swap and nothing stored on tensors: MONAI's block calls our attention module, which
    holds the very parameter objects MONAI built (names unchanged), and the layer's mask forms are found
    by the mask the layer handed out."""
    from monai.networks.nets.swin_unetr import BasicLayer

    torch.manual_seed(0)
    kw = dict(dim=24, depth=2, num_heads=3, window_size=(4, 4, 4), drop_path=[0.0, 0.0], qkv_bias=True)
    layer = CachedMaskBasicLayer(**kw)
    ref = BasicLayer(**kw)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    assert all(type(b.attn) is GroupedWindowAttention for b in layer.blocks)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, 24, 8, 12, 8)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref(x), atol=1e-5)
    (mask,) = layer._masks.values()
    assert not hasattr(mask, "_sat3d_forms")
    forms, which = layer.blocks[1].attn.mask_forms(mask)
    assert forms.shape[0] <= 8 and which.shape[0] == mask.shape[0]
    layer.blocks[0].attn.qkv.weight.data.zero_()  # the block's module holds the layer's parameter itself
    assert float(layer.state_dict()["blocks.0.attn.qkv.weight"].abs().sum()) == 0.0


@pytest.mark.parametrize("shifted", [False, True])
def test_attention_mask_is_contiguous_in_the_queries_dtype(monkeypatch, shifted):
    """SDPA's fused kernels take a mask only in the queries' dtype and with a contiguous last dimension;
    otherwise it falls back to its math path (on an H100: 7.6 ms instead of 0.74 ms per call, the encoder
    three times slower).  Under bf16 autocast on a GPU the block's input is fp32 (layer norm runs in fp32)
    while the queries are bf16, and the relative-position bias comes out of a permute."""
    from sat3d.modeling import window_attention

    seen = []
    sdpa = window_attention.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.dtype, attn_mask.dtype, attn_mask.stride(-1)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(window_attention.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    attn = GroupedWindowAttention(24, 3, (4, 4, 4), qkv_bias=True).eval()
    mask = compute_mask([8, 12, 8], (4, 4, 4), (2, 2, 2), "cpu") if shifted else None
    x = torch.randn(2 * 12, 64, 24)  # fp32, as the GPU's autocast leaves a layer norm's output
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, mask)
    assert out.shape == x.shape and seen and all(m == q == torch.bfloat16 and s == 1 for q, m, s in seen), seen
