"""The authors' published checkpoints: converter, ``sat3d_paper`` preset and paper protocol against their code.

The fixture (``shared/fixtures/sat3d_authors``, random weights in the authors' file layout) holds the outputs
of the authors' own code on a fixed 128^3 crop and four clicks, for their critic in train- and eval-mode
BatchNorm, and their preprocessing of two real volumes.  Tolerances are those its README derives from
float32 round-off.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from sat3d.build import build_sat3d
from sat3d.convert import ConversionError, convert, convert_state_dicts, load_authors_checkpoint
from sat3d.paper_preprocessing import authors_crop
from sat3d.protocols import PaperProtocol
from sat3d.weights import read_config

SHARED = REPO.parent / "shared"
FIXTURE = SHARED / "fixtures" / "sat3d_authors"
MODEL, CRITIC = FIXTURE / "sam_model_fixture.pth", FIXTURE / "critic_fixture.pth"

pytestmark = pytest.mark.skipif(not (FIXTURE / "reference.pt").is_file(), reason=f"fixture {FIXTURE} not available")


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted():
    net = build_sat3d("sat3d_paper", confidence_threshold=0.5)
    sd = convert_state_dicts(load_authors_checkpoint(MODEL), load_authors_checkpoint(CRITIC), net)
    return net, sd


@pytest.fixture(scope="module")
def embedding(converted, ref):
    net, sd = converted
    net.load_state_dict(sd, strict=True)
    net.eval()
    with torch.no_grad():
        return net.encode(ref["x"].float())


def test_embedding_equals_the_authors(embedding, ref):
    assert embedding.shape == (1, 384, 8, 8, 8)
    torch.testing.assert_close(embedding, ref["image_embedding"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("run,train_bn", [("critic_train_bn", True), ("critic_eval_bn", False)])
def test_four_clicks_equal_the_authors_loop(converted, embedding, ref, run, train_bn):
    net, sd = converted
    net.load_state_dict(sd, strict=True)  # a train-mode critic call updates running statistics: start fresh
    net.eval()
    net.critic.train(train_bn)
    x, r = ref["x"].float(), ref["runs"][run]
    proto = PaperProtocol()
    with torch.no_grad():
        state = proto.initial_state(net, x)
        for k in range(4):
            assert torch.equal(state.confidence.bool(), r["conf_in"][k]), f"confidence fed at click {k + 1}"
            p, lab = ref["click_points"][k].view(1, 1, 3), ref["click_labels"][k].view(1, 1)
            out = proto.step(net, embedding, x, p, lab, state)
            torch.testing.assert_close(out.low_res_logits, r["low_res_logits"][k], atol=2e-6, rtol=0)
            torch.testing.assert_close(out.iou, r["iou_pred"][k], atol=1e-6, rtol=0)
            state = out.state
    mask = (torch.sigmoid(out.logits) > 0.5)[0, 0].numpy()
    ref_mask = np.unpackbits(r["final_mask_last_click_packbits"].numpy()).reshape(128, 128, 128).astype(bool)
    assert int((mask != ref_mask).sum()) <= 5
    if "final_logits_last_click" in r:
        torch.testing.assert_close(out.logits, r["final_logits_last_click"].float(), atol=2.5e-4, rtol=0)


@pytest.mark.parametrize("mode", ["train_bn", "eval_bn"])
def test_critic_equals_the_authors(converted, ref, mode):
    net, sd = converted
    net.load_state_dict(sd, strict=True)
    critic = net.critic.train(mode == "train_bn")
    prob = ref["critic"]["prob_map"].float()
    with torch.no_grad():
        out = critic.forward_logits(prob, prob)
    torch.testing.assert_close(out, ref["critic"][mode]["on_prob_map"], atol=1e-6, rtol=0)


def test_paper_preset_differs_from_ours_only_where_the_authors_do():
    ours, paper = build_sat3d("sat3d_base"), build_sat3d("sat3d_paper")
    assert ours.image_encoder.stages[0].downsample.reduction.in_features == 8 * 48  # all 8 voxels
    assert paper.image_encoder.stages[0].downsample.reduction.in_features == 4 * 48  # the authors' 4 of 8
    assert not ours.critic.voxelwise and paper.critic.voxelwise
    assert paper.mask_decoder.mask_token.weight.shape == (4, 384) and ours.mask_decoder.mask_token.weight.shape == (1, 384)


@pytest.mark.parametrize("case", ["ct_sts001", "mr_brain1"])
def test_authors_preprocessing(case):
    r = torch.load(FIXTURE / "preprocessing_reference.pt", weights_only=True)[case]
    img, lab, _ = authors_crop(SHARED / r["shared_image_path"], SHARED / r["shared_label_path"], ct=r["modality"] == "CT")
    region = tuple(slice(a, b) for a, b in r["image_region_in_output"])
    own = img[0, 0][region]
    ref16 = r["output_image_region_fp16"]
    ulp = torch.finfo(torch.float16).eps * ref16.float().abs().clamp(min=2**-14)
    assert torch.all((own.half().float() - ref16.float()).abs() <= ulp)
    outside = torch.ones(img.shape[2:], dtype=torch.bool)
    outside[region] = False
    torch.testing.assert_close(img[0, 0][outside], r["pad_value"].expand(int(outside.sum())), atol=1e-6, rtol=0)
    assert abs(img.double().sum().item() - r["output_sum_fp64"]) < 1e-3 * abs(r["output_sum_fp64"])
    assert int(lab.sum()) == r["label_crop_voxels"]


def test_cli_writes_weights_with_the_paper_configuration(tmp_path):
    out = tmp_path / "model.pt"
    run = subprocess.run([sys.executable, "-m", "sat3d.convert", str(MODEL), str(CRITIC), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    cfg = read_config(out)
    assert cfg["preset"] == "sat3d_paper" and cfg["protocol"] == "paper" and cfg["roi_size"] == [128, 128, 128]
    assert cfg["intensity"]["name"] == "window_zscore_positive" and cfg["confidence_threshold"] == 0.5
    again = subprocess.run([sys.executable, "-m", "sat3d.convert", str(MODEL), str(CRITIC), str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr  # never silently overwritten


def _authors_file(tmp_path: Path, name: str, sd: dict) -> Path:
    p = tmp_path / name
    torch.save({"epoch": 1, "model_state_dict": sd, "args": argparse.Namespace(lr=8e-4)}, p)
    return p


def test_missing_key_is_named(tmp_path):
    sd = {f"module.{k}": v for k, v in load_authors_checkpoint(MODEL).items()}
    del sd["module.mask_decoder.iou_token.weight"]
    bad = _authors_file(tmp_path, "sam_model_bad.pth", sd)
    with pytest.raises(ConversionError, match=r"missing 1: mask_decoder\.iou_token\.weight"):
        convert(bad, CRITIC, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_wrong_shape_and_swapped_files_are_refused(tmp_path):
    sd = {f"module.{k}": v for k, v in load_authors_checkpoint(MODEL).items()}
    sd["module.prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 256)
    with pytest.raises(ConversionError, match="wrong shape 1: prompt_encoder.point_embeddings.0.weight"):
        convert(_authors_file(tmp_path, "m.pth", sd), CRITIC, tmp_path / "out.pt")
    with pytest.raises(ConversionError, match="critic_\\*.pth file second"):
        convert(MODEL, MODEL, tmp_path / "out.pt")


def test_truncated_and_unsafe_files_are_refused_with_their_name(tmp_path):
    trunc = tmp_path / "sam_model_trunc.pth"
    trunc.write_bytes(MODEL.read_bytes()[: 1 << 20])
    with pytest.raises(ConversionError, match="sam_model_trunc.pth: not a readable PyTorch checkpoint"):
        load_authors_checkpoint(trunc)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model_state_dict": {}, "hook": Path("x")}, unsafe)  # a global outside the allowlist
    with pytest.raises(ConversionError, match="unsafe.pth: not a readable"):
        load_authors_checkpoint(unsafe)


def test_paper_session_clicks_only_and_normalises_each_window(converted):
    """The paper protocol: no automatic mode (windows without a click stay background) and every window is
    z-normalised over its voxels > 0 before the encoder sees it."""
    from sat3d.paper_preprocessing import zscore_positive
    from sat3d.session import InteractiveSession

    net, sd = converted
    net.load_state_dict(sd, strict=True)
    torch.manual_seed(0)
    img = torch.rand(1, 128, 128, 200) * 300.0 - 100.0  # two windows along the last axis
    s = InteractiveSession(net, protocol="paper", window_intensity=zscore_positive, overlap=0.25)
    s.set_image(img)
    assert s.clicked_windows_only and float(s.logits.max()) < -10 and s.encoder_calls == 0
    s.add_click((64, 64, 10), positive=True)
    assert s.encoder_calls == 1 and s.decoder_calls == 1, "only the clicked window is computed"
    with torch.no_grad():
        emb = net.encode(zscore_positive(img[None, :, :, :, :128]))
    torch.testing.assert_close(s._embeddings[0], emb, atol=1e-5, rtol=0)
    assert float(s.logits[..., 150:].max()) < -10


def test_bundle_runs_converted_weights_with_the_paper_protocol(tmp_path):
    import json

    import nibabel as nib

    weights = tmp_path / "paper.pt"
    convert(MODEL, CRITIC, weights)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    vol = rng.normal(40, 20, (100, 90, 30)).astype(np.float32)
    vol[:, :10] = -1000.0  # air: a CT
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), str(data / "ct.nii.gz"))
    (data / "clicks.json").write_text(json.dumps({"ct.nii.gz": {"space": "voxel", "positive": [[50, 45, 15]]}}))
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(REPO / "bundle" / "configs" / "inference.json"),
         "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(weights),
         "--clicks_file", str(data / "clicks.json")],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    mask = nib.load(str(tmp_path / "out" / "ct_mask.nii.gz"))
    assert mask.shape == vol.shape and np.allclose(mask.affine, np.diag([1.0, 1.0, 3.0, 1.0]))
