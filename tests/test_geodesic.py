"""Geodesic click maps (``sat3d.modeling.geodesic``) and the ``sat3d_geodesic`` preset that reads them."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import grow_from_base_weights
from sat3d import build_sat3d
from sat3d.modeling.geodesic import geodesic_click_maps, geodesic_distance
from sat3d.protocols import Sat3dProtocol

CLICK = torch.tensor([[[32.0, 32.0, 32.0]]])


def _sphere_crop(radius: float, contrast: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(64.0)] * 3, indexing="ij"))
    inside = ((grid - 32.0) ** 2).sum(0) <= radius**2
    image = 0.05 * torch.randn((1, 1, 64, 64, 64), generator=g)
    image[0, 0][inside] += contrast
    return image, inside


@pytest.mark.parametrize("contrast", [0.4, -1.0])
def test_a_positive_map_covers_the_clicked_lesion_whatever_its_size(contrast):
    volumes = []
    for radius in (4.0, 8.0, 14.0):
        image, inside = _sphere_crop(radius, contrast)
        maps = geodesic_click_maps(image, CLICK, torch.tensor([[1]]))
        assert maps.shape == (1, 2, 64, 64, 64) and not maps[0, 1].any()  # no negative click
        region = maps[0, 0] > 0.5
        dice = 2 * (region & inside).sum() / (region.sum() + inside.sum())
        assert dice > 0.7, (radius, contrast, float(dice))  # the map is computed at 2x pooling: r 4 is 2 voxels
        volumes.append(int(region.sum()))
    assert volumes[0] < volumes[1] < volumes[2] and volumes[2] > 20 * volumes[0]


def test_negative_clicks_fill_the_second_map_and_clicks_outside_the_crop_are_left_out():
    image, inside = _sphere_crop(8.0, 1.0)
    points = torch.tensor([[[32.0, 32.0, 32.0], [5.0, 5.0, 5.0], [90.0, 32.0, 32.0]]])
    maps = geodesic_click_maps(image, points, torch.tensor([[0, 1, -1]]))
    assert maps[0, 1][inside].mean() > 0.5 and maps[0, 0][inside].mean() < 0.1  # the lesion is the negative's
    assert maps[0, 0, 5, 5, 5] > 0.9  # the background click's own region
    only_outside = geodesic_click_maps(image, torch.tensor([[[90.0, 32.0, 32.0], [-3.0, 1.0, 1.0]]]), torch.tensor([[1, 0]]))
    assert not only_outside.any()
    assert not geodesic_click_maps(image, None, None).any()


def test_geodesic_distance_is_the_chamfer_distance_on_a_flat_image_and_adds_the_edges_crossed():
    flat = torch.zeros(1, 16, 16, 16)
    seeds = torch.zeros(1, 16, 16, 16, dtype=torch.bool)
    seeds[0, 8, 8, 8] = True
    d = geodesic_distance(flat, seeds, gamma=20.0)
    assert d[0, 8, 8, 8] == 0 and d[0, 11, 8, 8] == pytest.approx(3.0) and d[0, 10, 10, 10] == pytest.approx(2 * math.sqrt(3))
    step = flat.clone()
    step[0, 10:] = 1.0  # a wall of contrast 1 two voxels away
    d2 = geodesic_distance(step, seeds, gamma=20.0)
    assert d2[0, 9, 8, 8] == pytest.approx(1.0) and d2[0, 10, 8, 8] == pytest.approx(1.0 + math.sqrt(1 + 400), rel=1e-5)
    assert geodesic_distance(flat, torch.zeros_like(seeds)).min() == 64.0  # no seed: nothing reached
    with pytest.raises(ValueError, match="gamma"):
        geodesic_distance(flat, seeds, gamma=-1.0)
    with pytest.raises(ValueError, match="divisible by pool"):
        geodesic_click_maps(torch.zeros(1, 1, 15, 16, 16), None, None)


def _tiny(click_branch: bool):
    decoder = {"detail_channels": (4, 8, 8)}
    if click_branch:
        decoder.update(click_detail_channels=(4, 4, 8), geodesic={"gamma": 20.0, "scale": 4.0, "pool": 2, "iterations": 8})
    return build_sat3d("sat3d_tiny", overrides={"decoder": decoder})


def test_the_click_branch_starts_as_the_detail_decoder_and_then_reads_the_click_maps():
    torch.manual_seed(0)
    detail, geo = _tiny(False).eval(), _tiny(True).eval()
    missing, unexpected = geo.load_state_dict(detail.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("mask_decoder.click_detail.") for k in missing)
    image = torch.randn(1, 1, 32, 32, 32)
    near = torch.tensor([[[10.0, 12.0, 14.0]]])
    lbl = torch.tensor([[1]])
    with torch.no_grad():
        emb = geo.encode(image)
        assert torch.equal(geo.decode(emb, near, lbl, image=image)[0], detail.decode(emb, near, lbl, image=image)[0])
        for proj in (geo.mask_decoder.click_detail.proj8, geo.mask_decoder.click_detail.proj4):
            torch.nn.init.normal_(proj.weight, std=0.5)
        a = geo.decode(emb, near, lbl, image=image)[0]
        assert not torch.allclose(a, detail.decode(emb, near, lbl, image=image)[0], atol=1e-4)
        # the protocol (training, session, evaluation) gets the same maps from the clicks it decodes
        assert torch.allclose(Sat3dProtocol(click_prompt_radius=0).step(geo, emb, image, near, lbl).low_res_logits, a)
        with pytest.raises(ValueError, match="needs the crop"):
            geo.decode(emb, near, lbl)
        with pytest.raises(ValueError, match="needs the geodesic click maps"):
            geo.mask_decoder(emb, geo.prompt_encoder.get_dense_pe(), *geo.prompt_encoder(near, lbl, None, None, batch_size=1),
                             image=image)
    with pytest.raises(ValueError, match="needs a detail branch"):
        build_sat3d("sat3d_tiny", overrides={"decoder": {"click_detail_channels": (4, 4, 8)}})


def test_geodesic_weights_grow_from_detail_weights_only_when_fine_tuning(tmp_path):
    detail, grown, init, _ = grow_from_base_weights(tmp_path, "sat3d_detail", "sat3d_geodesic")
    own, ref = grown.state_dict(), detail.state_dict()
    assert init and all(torch.equal(own[k], v) for k, v in init.items())
    assert all(torch.allclose(own[k], ref[k], atol=2e-3, rtol=1e-3) for k in ref)
