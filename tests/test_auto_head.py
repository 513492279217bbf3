"""The automatic head (``sat3d_auto``): used for prompt-free rows only, grows from ``sat3d_geodesic`` weights
as an exact copy, and trains alone with everything else frozen (``set_trainable``)."""

from __future__ import annotations

import pytest
import torch
from conftest import grow_from_base_weights
from ignite.engine import Events
from sat3d import build_sat3d
from sat3d.engine import SAT3DTrainer
from sat3d.session import InteractiveSession
from sat3d.weights import save_weights

AUTO = {"auto_head": {"image_channels": (4, 8), "embed_channels": 8, "channels": 8, "dilations": (1, 2)}}


def _pair(seed=0):
    """A tiny network with an automatic head whose output layers are no longer zero, and the same network
    without the head."""
    torch.manual_seed(seed)
    plain = build_sat3d("sat3d_tiny").eval()
    auto = build_sat3d("sat3d_tiny", overrides=AUTO).eval()
    auto.load_state_dict({**auto.state_dict(), **plain.state_dict()})
    return plain, auto


def _perturb(net):
    with torch.no_grad():
        for layer in (net.auto_head.out, net.auto_head.iou):
            layer.weight.normal_(0, 0.5)
            layer.bias.fill_(0.3)


def test_zero_initialised_head_computes_what_the_network_without_it_computes():
    plain, auto = _pair()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        a, b = auto(x), plain(x)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["iou"], b["iou"])
    _perturb(auto)
    with torch.no_grad():
        c = auto(x)
    assert not torch.allclose(c["logits"], b["logits"]) and not torch.allclose(c["iou"], b["iou"])


def test_head_changes_prompt_free_rows_only():
    plain, auto = _pair()
    _perturb(auto)
    x = torch.randn(3, 1, 32, 32, 32)
    pts = torch.tensor([[[16.0, 16, 16]], [[0.0, 0, 0]], [[8.0, 20, 12]]])
    lbl = torch.tensor([[1], [-1], [0]])  # clicked, padding only (no prompt), clicked
    with torch.no_grad():
        emb = plain.encode(x)
        ref_low, ref_iou = plain.decode(emb, pts, lbl, image=x)
        low, iou = auto.decode(emb, pts, lbl, image=x)
        assert torch.equal(low[[0, 2]], ref_low[[0, 2]]) and torch.equal(iou[[0, 2]], ref_iou[[0, 2]])
        assert not torch.allclose(low[1], ref_low[1]), "a row with padding only is the automatic mode"
        prev = torch.rand(3, 1, 32, 32, 32)
        assert torch.equal(auto.decode(emb, prev_mask=prev, image=x)[0], plain.decode(emb, prev_mask=prev, image=x)[0])
        assert not torch.allclose(auto.decode(emb, image=x)[0], plain.decode(emb, image=x)[0])
        with pytest.raises(ValueError, match="automatic head and needs the crop"):
            auto.decode(emb)


def test_session_uses_the_head_for_the_automatic_result_and_not_for_clicks():
    plain, auto = _pair()
    _perturb(auto)
    image = torch.randn(1, 40, 36, 32)
    out = {}
    for name, net in (("plain", plain), ("auto", auto)):
        s = InteractiveSession(net, roi_size=(32, 32, 32), clicked_windows_only=True)
        s.set_image(image)
        s.add_click((20, 18, 16), True)
        clicked = s.logits.clone()
        a = InteractiveSession(net, roi_size=(32, 32, 32))
        a.set_image(image)
        out[name] = (clicked, a.logits.clone())
    assert torch.equal(out["auto"][0], out["plain"][0])
    assert not torch.allclose(out["auto"][1], out["plain"][1])


def test_auto_weights_grow_from_geodesic_weights(tmp_path):
    geo, grown, _, _ = grow_from_base_weights(tmp_path, "sat3d_geodesic", "sat3d_auto")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grown.eval()(x)["logits"], geo.eval().half().float()(x)["logits"], atol=1e-5)


def test_set_trainable_freezes_all_but_the_named_parts():
    _, net = _pair()
    with pytest.raises(ValueError, match="names no parameter"):
        net.set_trainable(["auto_haed."])
    net.set_trainable(["auto_head."])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("auto_head.") for n in trainable)
    assert {id(p) for g in net.generator_param_groups(1e-3) for p in g["params"]} == {id(p) for p in net.auto_head.parameters()}
    net.set_trainable(None)
    assert all(p.requires_grad for p in net.parameters())
    net.set_trainable(["critic."])
    with pytest.raises(ValueError, match="no generator parameter is trainable"):
        net.generator_param_groups(1e-3)


def test_training_the_head_alone_moves_nothing_else():
    _, net = _pair()
    net.set_trainable(["auto_head."]).train()
    img = torch.randn(2, 1, 32, 32, 32)
    lab = torch.zeros(2, 1, 32, 32, 32)
    lab[:, :, 8:20, 10:22, 9:21] = 1
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW(net.generator_param_groups(1e-2), lr=1e-2)
    copt = torch.optim.AdamW(net.critic.parameters(), lr=1e-2)
    trainer = SAT3DTrainer(device="cpu", max_epochs=1, train_data_loader=[{"image": img, "label": lab}] * 2, network=net,
                           optimizer=opt, critic_optimizer=copt, num_prompt_steps=1, decollate=False)
    modes = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: modes.append(net.image_encoder.training))
    trainer.run()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("auto_head.") for n in moved)
    assert "critic_loss" not in trainer.state.output, "a frozen critic gets no step"
    assert modes == [False, False], "frozen parts run in eval mode"


def test_train_workflow_trains_the_head_alone_from_geodesic_weights(tmp_path):
    """``--preset sat3d_auto --init_weights <sat3d_geodesic> --trainable '["auto_head."]'``: the exported weights
    are the initial ones everywhere but in the head, and the run's log says the head grew."""
    import json
    import subprocess
    import sys

    import nibabel as nib
    import numpy as np
    from conftest import BUNDLE, make_sphere_volume
    from sat3d.weights import read_weights

    data = tmp_path / "data"
    data.mkdir()
    items = []
    for i in range(2):
        img, lab, aff = make_sphere_volume(seed=i, centre=[17 + 2 * i, 18, 21])
        nib.save(nib.Nifti1Image(img, aff), str(data / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), aff), str(data / f"c{i}_seg.nii.gz"))
        items.append({"image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"})
    (data / "datalist.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
    torch.manual_seed(0)
    geo = build_sat3d("sat3d_geodesic", overrides={"roi_size": (32, 32, 32)})
    init = save_weights(geo, tmp_path / "geo.pt", {"preset": "sat3d_geodesic", "roi_size": [32, 32, 32]})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "train", "--config_file", str(BUNDLE / "configs" / "train.json"),
           "--dataset_dir", str(data), "--output_dir", str(out), "--preset", "sat3d_auto", "--roi_size", "[32,32,32]",
           "--init_weights", str(init), "--trainable", '["auto_head."]', "--num_prompt_steps", "1", "--max_epochs", "1",
           "--epoch_length", "2", "--val_interval", "5", "--num_workers", "0", "--learning_rate", "0.01"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "added parameter tensors (auto_head.*)" in res.stderr + res.stdout
    state, config = read_weights(out / "checkpoints" / "model.pt")
    start, _ = read_weights(init)
    assert config["preset"] == "sat3d_auto"
    moved = {k for k in state if k.startswith("auto_head.") and k.endswith(".weight") and float(state[k].abs().sum()) > 0
             and k.split(".")[1] in ("out", "iou")}
    assert moved, "the head's zero-initialised outputs must have been trained"
    assert all(torch.equal(state[k], start[k]) for k in start), "every part but the head must stay as loaded"


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_image_blocks_deepen_each_level_of_the_crop_path(blocks):
    """``image_blocks`` adds convolutions at 1/2 and 1/4 of the crop; 1 is the first head's layout (the keys
    of weights trained with it), and the output layers still start at zero."""
    from sat3d.modeling.auto_head import AutoHead3D

    head = AutoHead3D(embed_dim=8, image_channels=(4, 8), embed_channels=8, channels=8, dilations=(1,), image_blocks=blocks)
    convs = [m for m in head.image.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 2 * blocks and [c.stride[0] for c in convs] == ([2] + [1] * (blocks - 1)) * 2
    if blocks == 1:
        assert {k.split(".")[1] for k in head.state_dict() if k.startswith("image.")} == {"0", "1"}
    d_low, d_iou = head(torch.randn(2, 1, 32, 32, 32), torch.randn(2, 8, 2, 2, 2), torch.randn(2, 1, 8, 8, 8))
    assert d_low.shape == (2, 1, 8, 8, 8) and not d_low.any() and not d_iou.any()


def test_image_blocks_below_one_is_refused():
    from sat3d.modeling.auto_head import AutoHead3D

    with pytest.raises(ValueError, match="image_blocks"):
        AutoHead3D(embed_dim=8, image_blocks=0)
