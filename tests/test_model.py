"""The SAT3D network: paper-sized preset, shapes, prompts, critic and patch merging."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.swin_unetr import PatchMergingV2
from sat3d import PRESETS, SAT3D, build_sat3d
from sat3d.flops import count_gmac

PAPER_PARAMS = 11.1e6
PAPER_GMAC = 67.0


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return build_sat3d("sat3d_base").eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_sat3d("sat3d_tiny").eval()


def test_default_preset_matches_paper_parameter_count(base):
    n = sum(p.numel() for p in base.parameters())
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.05, f"{n / 1e6:.2f} M parameters"


def test_default_preset_shapes_and_gmac(base):
    x = torch.randn(1, 1, 128, 128, 128)
    out = {}

    def run():
        out["emb"] = base.encode(x)
        out["low"], out["iou"] = base.decode(out["emb"], torch.tensor([[[64.0, 60.0, 70.0]]]), torch.tensor([[1]]))
        logits = torch.nn.functional.interpolate(out["low"], size=x.shape[2:], mode="trilinear")
        out["conf"] = base.judge(x, torch.sigmoid(logits))

    gmac = count_gmac(run)
    assert out["emb"].shape == (1, 384, 8, 8, 8)
    assert out["low"].shape == (1, 1, 32, 32, 32)
    assert out["iou"].shape == (1, 1)
    assert out["conf"].shape == (1, 1, 128, 128, 128)
    assert float(out["conf"].min()) >= 0.0 and float(out["conf"].max()) <= 1.0
    assert abs(gmac - PAPER_GMAC) / PAPER_GMAC < 0.10, f"{gmac:.1f} GMAC"
    # the encoder alone: attention must be counted (without it the encoder would be ~28 GMAC)
    assert count_gmac(lambda: base.encode(x)) > 55.0


def test_automatic_mode_and_prompts_change_output(tiny):
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        auto = tiny(x)
        assert auto["logits"].shape == (2, 1, 32, 32, 32)
        assert auto["confidence"].shape == (2, 1, 32, 32, 32)
        pts = torch.tensor([[[10.0, 12.0, 14.0]], [[20.0, 5.0, 7.0]]])
        clicked = tiny(x, pts, torch.tensor([[1], [0]]))
        dense = tiny(x, prev_mask=torch.rand(2, 1, 32, 32, 32), confidence=torch.rand(2, 1, 32, 32, 32))
    assert not torch.allclose(auto["logits"], clicked["logits"])
    assert not torch.allclose(auto["logits"], dense["logits"])


def test_positive_and_negative_clicks_differ(tiny):
    x = torch.randn(1, 1, 32, 32, 32)
    p = torch.tensor([[[10.0, 12.0, 14.0]]])
    with torch.no_grad():
        pos = tiny(x, p, torch.tensor([[1]]))["logits"]
        neg = tiny(x, p, torch.tensor([[0]]))["logits"]
        pad = tiny(x, p, torch.tensor([[-1]]))["logits"]
    assert not torch.allclose(pos, neg)
    assert not torch.allclose(pos, pad)


def test_dense_prompt_branches_are_separate(tiny):
    pe = tiny.prompt_encoder
    m = torch.rand(1, 1, 32, 32, 32)
    _, only_mask = pe(prev_mask=m)
    _, only_conf = pe(confidence=m)
    half = pe.embed_dim // 2
    # the mask fills the first half, the confidence map the second; the other half is the learned "empty" one
    assert torch.allclose(only_mask[:, half:], pe.no_confidence_embed.weight.view(1, -1, 1, 1, 1).expand_as(only_mask[:, half:]))
    assert torch.allclose(only_conf[:, :half], pe.no_mask_embed.weight.view(1, -1, 1, 1, 1).expand_as(only_conf[:, :half]))


def test_patch_merging_uses_every_voxel():
    merge = PatchMergingV2(dim=2)
    x = torch.randn(1, 2, 2, 2, 2)
    base = merge(x)
    for idx in torch.cartesian_prod(torch.arange(2), torch.arange(2), torch.arange(2)):
        y = x.clone()
        y[0, idx[0], idx[1], idx[2]] += 5.0
        assert not torch.allclose(merge(y), base), f"voxel {idx.tolist()} is ignored"
    enc = build_sat3d("sat3d_tiny").image_encoder
    assert all(isinstance(s.downsample, PatchMergingV2) and type(s.downsample) is PatchMergingV2 for s in enc.stages[:-1])


def test_critic_sees_context_and_has_no_batchnorm(tiny):
    critic = tiny.critic
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    assert any(isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3) for m in critic.modules())
    img = torch.randn(1, 1, 32, 32, 32)
    mask = torch.zeros(1, 1, 32, 32, 32)
    mask2 = mask.clone()
    mask2[0, 0, 16, 16, 20] = 1.0  # change one voxel 4 voxels away from the probed one
    with torch.no_grad():
        critic.train()
        a_train = critic(img, mask)
        critic.eval()
        a = critic(img, mask)
        b = critic(img, mask2)
    assert torch.allclose(a, a_train), "critic must behave the same in train and eval mode"
    assert not torch.isclose(a[0, 0, 16, 16, 16], b[0, 0, 16, 16, 16])


def test_builder_errors():
    with pytest.raises(ValueError, match="unknown SAT3D preset"):
        build_sat3d("nope")
    with pytest.raises(ValueError, match="multiple of the encoder stride"):
        build_sat3d("sat3d_tiny", overrides={"roi_size": (30, 32, 32)})
    assert "sat3d_base" in PRESETS and isinstance(build_sat3d("sat3d_tiny"), SAT3D)


def test_decode_rejects_wrong_crop(tiny):
    with pytest.raises(ValueError, match="embedding grid"):
        tiny.decode(torch.randn(1, tiny.prompt_encoder.embed_dim, 3, 2, 2))
