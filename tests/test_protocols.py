"""The click protocol's dense click prompt: painted once, in the protocol step every path runs."""

from __future__ import annotations

import pytest
import torch
from sat3d import build_sat3d
from sat3d.protocols import PaperProtocol, Sat3dProtocol, paint_clicks, protocol_of


def test_paint_clicks_balls_over_the_previous_prompt():
    prev = torch.full((1, 1, 12, 12, 12), 0.25)
    pts = torch.tensor([[[5.0, 5.0, 5.0], [5.0, 6.0, 5.0], [1.0, 1.0, 1.0]]])
    lab = torch.tensor([[1, 0, -1]])  # positive, then a negative next to it, then padding
    out = paint_clicks(prev, pts, lab, 2.0, (12, 12, 12))
    assert out[0, 0, 5, 3, 5] == 1.0  # in the positive ball only
    assert out[0, 0, 5, 5, 5] == 0.0 and out[0, 0, 5, 8, 5] == 0.0  # the later negative click wins where they overlap
    assert out[0, 0, 1, 1, 1] == 0.25 and out[0, 0, 11, 11, 11] == 0.25  # padding and far voxels keep the prompt
    assert torch.equal(prev, torch.full((1, 1, 12, 12, 12), 0.25))  # the caller's prompt is not modified
    alone = paint_clicks(None, pts[:, :1], lab[:, :1], 2.0, (12, 12, 12))
    assert int(alone.sum()) == 33  # voxels within distance 2 of a voxel centre


@pytest.mark.parametrize("radius", [0.0, 3.0])
def test_protocol_step_gives_the_decoder_the_painted_prompt(radius):
    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny").eval()
    seen = []
    decode = net.decode

    def recording(emb, points=None, labels=None, mask=None, conf=None, image=None):
        seen.append(None if mask is None else mask.clone())
        return decode(emb, points, labels, mask, conf, image=image)

    net.decode = recording
    image = torch.randn(1, 1, 32, 32, 32)
    proto = Sat3dProtocol(click_prompt_radius=radius)
    with torch.no_grad():
        emb = net.encode(image)
        auto = proto.step(net, emb, image)  # no click: the automatic mode, no dense prompt at all
        proto.step(net, emb, image, torch.tensor([[[10.0, 12.0, 14.0]]]), torch.tensor([[1]]))
        proto.step(net, emb, image, torch.tensor([[[10.0, 12.0, 14.0]]]), torch.tensor([[1]]), auto.state)
    assert seen[0] is None
    if radius == 0:
        assert seen[1] is None and torch.equal(seen[2], auto.state.mask_prompt)
    else:
        assert seen[1][0, 0, 10, 12, 14] == 1 and seen[1][0, 0, 10, 12, 18] == 0 and int(seen[1].sum()) > 100
        expect = paint_clicks(auto.state.mask_prompt, torch.tensor([[[10.0, 12.0, 14.0]]]), torch.tensor([[1]]), 3.0,
                              (32, 32, 32))
        assert torch.equal(seen[2], expect)
    with pytest.raises(ValueError, match="click_prompt_radius"):
        Sat3dProtocol(click_prompt_radius=-1)


def test_the_weights_select_the_protocol_and_its_radius(tmp_path):
    from sat3d.engine import SAT3DTrainer
    from sat3d.session import InteractiveSession
    from sat3d.weights import save_weights

    assert protocol_of({"protocol": "sat3d"}).click_prompt_radius == 0  # files older than the setting
    assert isinstance(protocol_of({"protocol": "paper", "click_prompt_radius": 3}), PaperProtocol)
    net = build_sat3d("sat3d_tiny")
    w = save_weights(net, tmp_path / "m.pt", {"preset": "sat3d_tiny", "roi_size": [32, 32, 32], "click_prompt_radius": 2.5})
    assert InteractiveSession.from_weights(str(w)).protocol.click_prompt_radius == 2.5
    opt = torch.optim.AdamW(net.generator_parameters())
    copt = torch.optim.AdamW(net.critic.parameters())
    trainer = SAT3DTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=opt,
                           critic_optimizer=copt, click_prompt_radius=2.5)
    assert trainer.protocol.click_prompt_radius == 2.5


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_bundle_configs_take_the_protocol_from_the_weights(tmp_path, config):
    from conftest import BUNDLE
    from monai.bundle import ConfigParser
    from sat3d.weights import save_weights

    w = save_weights(build_sat3d("sat3d_tiny"), tmp_path / "m.pt",
                     {"preset": "sat3d_tiny", "roi_size": [32, 32, 32], "click_prompt_radius": 2.5})
    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / config))
    cp.update({"bundle_root": str(BUNDLE), "ckpt_path": str(w), "dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "o")})
    inferer = cp.get_parsed_content("inferer")
    assert isinstance(inferer.protocol, Sat3dProtocol) and inferer.protocol.click_prompt_radius == 2.5
