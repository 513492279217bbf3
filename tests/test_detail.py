"""The ``sat3d_detail`` preset: a conv branch adds crop detail to the decoder; it grows from ``sat3d_base`` weights."""

from __future__ import annotations

import pytest
import torch
from conftest import grow_from_base_weights
from sat3d import build_sat3d
from sat3d.protocols import Sat3dProtocol
from sat3d.weights import load_weights, save_weights

ROI = {"roi_size": (32, 32, 32)}


def _tiny_detail():
    return build_sat3d("sat3d_tiny", overrides={"decoder": {"detail_channels": (4, 8, 8)}})


def test_detail_branch_starts_as_the_plain_decoder_and_then_reads_the_crop():
    torch.manual_seed(0)
    plain = build_sat3d("sat3d_tiny").eval()
    detail = _tiny_detail().eval()
    missing, unexpected = detail.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("mask_decoder.detail.") for k in missing)
    image, other = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
    pts, lbl = torch.tensor([[[10.0, 12.0, 14.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        emb = detail.encode(image)
        assert torch.equal(detail.decode(emb, pts, lbl, image=image)[0], plain.decode(emb, pts, lbl)[0])
        for proj in (detail.mask_decoder.detail.proj8, detail.mask_decoder.detail.proj4):
            torch.nn.init.normal_(proj.weight, std=0.5)
        a = detail.decode(emb, pts, lbl, image=image)[0]
        b = detail.decode(emb, pts, lbl, image=other)[0]  # same embedding, other crop: only the branch differs
        assert a.shape == (1, 1, 8, 8, 8) and not torch.allclose(a, b, atol=1e-4)
        # the protocol (training, session, evaluation) passes the crop it decodes
        step = Sat3dProtocol().step(detail, emb, image, pts, lbl)
        assert torch.allclose(step.low_res_logits, a)
        with pytest.raises(ValueError, match="needs the image crop"):
            detail.decode(emb, pts, lbl)
        with pytest.raises(ValueError, match="does not fit the embedding grid"):
            detail.decode(emb, pts, lbl, image=torch.randn(1, 1, 64, 64, 64))


def test_detail_weights_grow_from_base_weights_only_when_fine_tuning(tmp_path):
    base, grown, init, expect = grow_from_base_weights(tmp_path, "sat3d_base", "sat3d_detail")
    own = grown.state_dict()
    assert all(torch.equal(own[k], v) for k, v in init.items())
    ref = base.state_dict()
    assert all(torch.allclose(own[k], ref[k], atol=2e-3, rtol=1e-3) for k in ref)
    paper = save_weights(build_sat3d("sat3d_tiny"), tmp_path / "tiny.pt", {"preset": "sat3d_tiny", "roi_size": [32, 32, 32]})
    with pytest.raises(ValueError, match="preset"):
        load_weights(build_sat3d("sat3d_detail", overrides=ROI), paper, expect=expect, grow=True)


def test_lr_multipliers_make_groups_over_every_generator_parameter():
    net = _tiny_detail()
    groups = net.generator_param_groups(1e-3, {"mask_decoder.detail.": 10})
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.generator_parameters()) and len(ids) == len(set(ids))
    fast = next(g for g in groups if g["lr"] == pytest.approx(1e-2))
    assert {id(p) for p in fast["params"]} == {id(p) for p in net.mask_decoder.detail.parameters()}
    assert len(net.generator_param_groups(1e-3)) == 1
    with pytest.raises(ValueError, match="names no trainable generator parameter"):
        net.generator_param_groups(1e-3, {"decoder.typo": 2})
