"""Interactive session: cached embeddings, local updates, exact undo, agreement with the inferer."""

from __future__ import annotations

import pytest
import torch
from sat3d import build_sat3d
from sat3d.session import InteractiveSession


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_sat3d("sat3d_tiny").eval()


@pytest.fixture
def image():
    torch.manual_seed(1)
    return torch.randn(1, 70, 45, 33)


def test_automatic_result_equals_monai_sliding_windows(net, image):
    """The session's window plan and blending are MONAI's sliding-window inference."""
    from monai.inferers import sliding_window_inference

    s = InteractiveSession(net, overlap=0.25)
    s.set_image(image)

    def predictor(x):
        out = net(x)
        return torch.cat([out["logits"], out["confidence"]], 1)

    with torch.no_grad():
        ref = sliding_window_inference(image[None], (32, 32, 32), 1, predictor, overlap=0.25, mode="gaussian")
    assert torch.allclose(s.logits, ref[0, 0], atol=1e-4)
    assert torch.allclose(s.confidence, ref[0, 1], atol=1e-5)
    assert s.mask.shape == image.shape[1:] and s.mask.dtype == torch.uint8


def test_embeddings_cached_and_clicks_update_only_their_windows(net, image):
    s = InteractiveSession(net, overlap=0.25)
    s.set_image(image)
    _ = s.mask
    n = len(s.windows)
    assert s.encoder_calls == n and s.decoder_calls == n
    before = s.logits.clone()
    click = (5.0, 5.0, 5.0)
    inside = [w for w in s.windows if all(sl.start <= v < sl.stop for sl, v in zip(w, click))]
    s.add_click(click, positive=True)
    assert s.encoder_calls == n, "no embedding may be recomputed"
    assert s.decoder_calls == n + len(inside) and len(inside) < n
    changed = (s.logits - before).abs() > 1e-6
    covered = torch.zeros_like(changed)
    for w in inside:
        covered[tuple(slice(sl.start, min(sl.stop, d)) for sl, d in zip(w, image.shape[1:]))] = True
    assert changed.any() and not (changed & ~covered).any(), "only the clicked windows may change"


def test_undo_restores_exactly_and_reset(net, image):
    s = InteractiveSession(net, overlap=0.5)
    s.set_image(image)
    auto_l, auto_c = s.logits.clone(), s.confidence.clone()
    s.add_click((10, 20, 30), positive=True)
    one = s.logits.clone()
    s.add_click((60, 40, 3), positive=False)
    assert not torch.equal(s.logits, one)
    assert s.undo()
    assert torch.equal(s.logits, one)
    assert s.undo() and torch.equal(s.logits, auto_l) and torch.equal(s.confidence, auto_c)
    assert not s.undo()
    s.add_click((10, 20, 30))
    s.reset()
    assert s.clicks == [] and torch.allclose(s.logits, auto_l, atol=1e-5)


def test_click_runs_one_protocol_step_with_the_previous_result(net):
    torch.manual_seed(2)
    img = torch.randn(1, 32, 32, 32)  # one window
    s = InteractiveSession(net)
    s.set_image(img)
    prob, conf = s.probability.clone(), s.confidence.clone()
    s.add_click((12, 13, 14), positive=True)
    with torch.no_grad():
        low, _ = net.decode(net.encode(img[None]), torch.tensor([[[12.0, 13.0, 14.0]]]), torch.tensor([[1]]),
                            prob[None, None], (conf >= net.confidence_threshold).float()[None, None])
        ref = torch.nn.functional.interpolate(low, size=(32, 32, 32), mode="trilinear", align_corners=False)
    assert torch.allclose(s.logits, ref[0, 0], atol=1e-4)


def test_errors(net, image):
    s = InteractiveSession(net)
    with pytest.raises(ValueError, match="set_image"):
        s.add_click((1, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        s.set_image(torch.full((1, 8, 8, 8), float("nan")))
    s.set_image(image)
    with pytest.raises(ValueError, match="outside the image"):
        s.add_click((70, 0, 0))
    with pytest.raises(ValueError, match="3 coordinates"):
        s.add_click((1, 2))


def test_undo_then_click_equals_a_fresh_session(net, image):
    """Catches an undo that restores the stitched sums but not the per-window outputs: click A, undo, click B
    must equal a fresh session with only click B (and random click/undo sequences their replay)."""
    import random

    a = InteractiveSession(net, overlap=0.5)
    a.set_image(image)
    a.add_click((10, 20, 30), positive=True)
    a.undo()
    a.add_click((12, 22, 28), positive=False)
    b = InteractiveSession(net, overlap=0.5)
    b.set_image(image)
    b.add_click((12, 22, 28), positive=False)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.confidence, b.confidence)
    rnd = random.Random(0)
    for _ in range(1):
        s = InteractiveSession(net, overlap=0.5)
        s.set_image(image)
        kept = []
        for _ in range(4):
            if kept and rnd.random() < 0.4:
                s.undo()
                kept.pop()
            else:
                c = (rnd.uniform(0, 69), rnd.uniform(0, 44), rnd.uniform(0, 32))
                p = rnd.random() < 0.5
                s.add_click(c, positive=p)
                kept.append((c, p))
        r = InteractiveSession(net, overlap=0.5)
        r.set_image(image)
        for c, p in kept:
            r.add_click(c, positive=p)
        assert torch.equal(s.logits, r.logits) and torch.equal(s.confidence, r.confidence)


def test_file_session_maps_clicks_and_returns_the_file_grid(tmp_path):
    """FileSession: the bundle's preprocessing, clicks in the file's voxel or world coordinates, results on
    the file's grid, equal to what folder inference writes for the same clicks (confidence and mask)."""
    import json
    import subprocess
    import sys

    import nibabel as nib
    import numpy as np
    from conftest import BUNDLE, REPO
    from sat3d.session import FileSession
    from sat3d.weights import save_weights

    torch.manual_seed(0)
    weights = save_weights(build_sat3d("sat3d_tiny", overrides={"roi_size": (32, 32, 32)}), tmp_path / "tiny.pt",
                           {"preset": "sat3d_tiny", "roi_size": [32, 32, 32], "training": "random (test)"})
    affine = np.array([[-1.2, 0, 0, 30.0], [0, -1.0, 0, 20.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])  # LPS, anisotropic
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(rng.normal(0, 1, (40, 36, 14)).astype(np.float32), affine), str(data / "v.nii.gz"))
    voxel = [20, 10, 7]
    world = (affine @ [*voxel, 1])[:3].tolist()
    fs = FileSession(str(weights))
    fs.set_image(str(data / "v.nii.gz"))
    fs.add_click(voxel, positive=True)
    by_voxel = fs.confidence
    assert by_voxel.shape == (40, 36, 14) and fs.mask.shape == (40, 36, 14)
    fs.undo()
    fs.add_click(world, positive=True, space="world")
    np.testing.assert_array_equal(fs.confidence, by_voxel)
    with pytest.raises(ValueError, match="v.nii.gz: clicks .* outside"):
        fs.add_click([400, 0, 0])
    (data / "clicks.json").write_text(json.dumps({"v.nii.gz": {"space": "voxel", "positive": [voxel]}}))
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                          str(BUNDLE / "configs" / "inference.json"), "--dataset_dir", str(data), "--output_dir",
                          str(tmp_path / "out"), "--ckpt_path", str(weights), "--clicks_file", str(data / "clicks.json")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    written = np.asarray(nib.load(str(tmp_path / "out" / "v_confidence.nii.gz")).dataobj)
    np.testing.assert_allclose(written, by_voxel, atol=1e-5)
    fs.undo()
    fs.add_click(voxel, positive=True)  # same state as the folder run: the masks agree too (clicks forced alike)
    written_mask = np.asarray(nib.load(str(tmp_path / "out" / "v_mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(written_mask, fs.mask)
    assert fs.mask[tuple(voxel)] == 1


@pytest.mark.parametrize("positive", [True, False])
def test_click_radius_makes_the_mask_agree_with_the_clicks_without_changing_the_feedback(net, image, positive):
    """The one place clicked voxels are forced (folder inference, MONAI Label, FileSession and the evaluation
    all read the session): only the ball of ``click_radius`` around each click changes; what the network is
    fed back, its confidence and the next click's result are those of the unforced session."""
    plain, forced = InteractiveSession(net, click_radius=0), InteractiveSession(net, click_radius=2)
    c = (35, 20, 16)
    for s in (plain, forced):
        s.set_image(image)
        s.add_click(c, positive=positive)
    assert forced.mask[c] == (1 if positive else 0)
    diff = (forced.logits != plain.logits).nonzero()
    assert len(diff) > 0 and bool(((diff - torch.tensor(c)) ** 2).sum(1).max() <= 4)
    assert torch.equal(forced.confidence, plain.confidence)
    for s in (plain, forced):
        s.add_click((10, 10, 10), positive=True)
    assert torch.equal(forced.confidence, plain.confidence)
    far = (slice(0, 8), slice(0, 8), slice(20, 33))
    assert torch.equal(forced.logits[far], plain.logits[far])
    with pytest.raises(ValueError, match="click_radius"):
        InteractiveSession(net, click_radius=-1)


def test_evaluation_forces_clicks_as_the_inferer_does(net):
    from sat3d.evaluation import InteractiveEvaluation
    from sat3d.inferer import SAT3DInferer

    ev = InteractiveEvaluation([], "unused", net, lambda d: d, SAT3DInferer((32, 32, 32), click_radius=3),
                               require_weights=False)
    assert ev._session().click_radius == 3


def test_predicted_iou_is_the_iou_heads_estimate_weighted_by_mask_voxels(net, image):
    """The per-case quality in the results table: the windows' IoU-head outputs, weighted by the mask voxels
    each window holds; ``None`` for an empty mask; restored exactly by undo."""
    s = InteractiveSession(net, threshold=0.5)
    s.set_image(image)
    mask = s.mask
    if not mask.any():
        s.threshold = 0.0  # every voxel: all windows count
        mask = s.mask
    full = torch.zeros(s._sum_w.shape, dtype=torch.uint8)
    full[tuple(slice(0, n) for n in s.spatial)] = mask
    weights = [float(full[w].sum()) for w in s.windows]
    with torch.no_grad():
        heads = [min(max(float(net.decode(net.encode(s._crop(i)))[1]), 0.0), 1.0) for i in range(len(s.windows))]  # an IoU: in [0, 1]
    expected = sum(w * h for w, h in zip(weights, heads)) / sum(weights)
    assert s.predicted_iou == pytest.approx(expected, rel=1e-5)
    before = s.predicted_iou
    s.add_click((35, 20, 16), positive=True)
    s.undo()
    assert s.predicted_iou == before
    s.threshold = 1.0  # an empty mask has no quality estimate
    assert s.predicted_iou is None


@pytest.mark.parametrize("first", ["click", "read"])
def test_auto_clicked_windows_first_action_decides(net, image, first):
    """``clicked_windows_only="auto"``: a session whose first action is a click computes only the clicked
    windows (no automatic result far from the click); one read before any click runs the automatic mode."""
    s = InteractiveSession(net, overlap=0.25, clicked_windows_only="auto")
    s.set_image(image)
    assert s.clicked_mode is None
    click = (5.0, 5.0, 5.0)
    inside = [w for w in s.windows if all(sl.start <= v < sl.stop for sl, v in zip(w, click))]
    if first == "click":
        s.add_click(click, positive=True)
        assert s.clicked_mode is True and s.encoder_calls == len(inside) < len(s.windows)
        far = [w for w in s.windows if w not in inside]
        covered = torch.zeros(s._sum_w.shape, dtype=torch.bool)
        for w in inside:
            covered[w] = True
        assert not s.mask[~covered[: image.shape[1], : image.shape[2], : image.shape[3]]].any(), \
            "windows without a click stay background"
        assert far, "the test image must have windows without the click"
    else:
        _ = s.mask
        assert s.clicked_mode is False and s.encoder_calls == len(s.windows)
        auto = InteractiveSession(net, overlap=0.25)
        auto.set_image(image)
        assert torch.equal(s.logits, auto.logits)
        s.add_click(click, positive=True)
        assert s.clicked_mode is False, "later clicks refine the automatic result"
    s.set_image(image)
    assert s.clicked_mode is None, "a new image decides anew"
    with pytest.raises(ValueError):
        InteractiveSession(net, clicked_windows_only="sometimes")


def test_clicked_windows_reach_into_their_overlap_with_windows_never_run(net, image):
    """Clicked windows only: the blend is over the windows that were computed.  A window that was never run
    adds nothing, so a clicked window's result is whole where it overlaps one (no cut at the overlap, where
    a lesion next to a window's edge would lose its part); voxels no computed window reaches stay background
    with confidence 1.  Undo and reset restore the blend weights too."""
    s = InteractiveSession(net, overlap=0.25, clicked_windows_only=True)
    s.set_image(image)
    s.network = _Constant(6.0, 0.4)
    s._embeddings = {i: torch.zeros(1) for i in range(len(s.windows))}  # the stub decodes without an encoder
    click = (36.0, 20.0, 16.0)  # in one window along the first axis ([24, 56), overlapping [0, 32) and [38, 70))
    inside = [w for w in s.windows if all(sl.start <= v < sl.stop for sl, v in zip(w, click))]
    covered = torch.zeros(s._sum_w.shape, dtype=torch.bool)
    for w in inside:
        covered[w] = True
    covered = covered[: image.shape[1], : image.shape[2], : image.shape[3]]
    assert 1 < len(inside) < len(s.windows) and not covered.all()
    s.add_click(click, positive=True)
    assert bool(s.mask[covered].all()), "every voxel of a clicked window carries its (positive) result"
    assert not s.mask[~covered].any(), "the rest stays background"
    assert torch.allclose(s.confidence[covered], torch.tensor(0.4)) and bool((s.confidence[~covered] == 1).all())
    s.add_click((5.0, 5.0, 5.0), positive=True)
    s.undo()
    assert bool(s.mask[covered].all()) and not s.mask[~covered].any(), "undo restores the blend weights"
    assert bool((s.confidence[~covered] == 1).all()) and torch.allclose(s.confidence[covered], torch.tensor(0.4))
    s.reset()
    assert not s.mask.any() and bool((s.confidence == 1).all()), "reset: nothing computed, all background"


class _Constant(torch.nn.Module):
    """A stand-in network whose every window says tumour (logit ``value``) with confidence ``conf``."""

    confidence_threshold = 0.3

    def __init__(self, value: float, conf: float) -> None:
        super().__init__()
        self.value, self.conf = value, conf
        self.critic = self

    def decode(self, embedding, points, labels, mask_prompt, confidence, image):
        return torch.full((1, 1, *(s // 4 for s in image.shape[2:])), self.value), torch.ones(1, 1)

    def forward_logits(self, image, prob):
        return torch.full_like(prob, float(torch.logit(torch.tensor(self.conf))))
