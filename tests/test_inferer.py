"""Sliding-window inferer: metadata, click mapping and dense-prompt alignment across windows."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from sat3d import build_sat3d
from sat3d.inferer import SAT3DInferer, clicks_in_window


class _EchoCritic(torch.nn.Module):
    def forward_logits(self, image, prob):
        return torch.full_like(prob, 10.0)


class Recorder(torch.nn.Module):
    """Stands in for SAT3D: the embedding is the window itself; records the prompts each decode receives.

    The automatic result echoes the image; with a mask prompt it echoes the prompt (as logits)."""

    confidence_threshold = 0.3
    roi_size = (32, 32, 32)

    def __init__(self):
        super().__init__()
        self.calls = []
        self.encoded = []
        self.critic = _EchoCritic()

    def encode(self, x):
        self.encoded.append(x.shape[0])
        return x.clone()

    def decode(self, emb, points=None, point_labels=None, prev_mask=None, confidence=None, image=None):
        self.calls.append((emb, points, point_labels, prev_mask))
        logits = torch.logit(prev_mask.clamp(1e-6, 1 - 1e-6)) if prev_mask is not None else emb[:, :1]
        return logits, torch.zeros(emb.shape[0], 1)


def test_clicks_in_window_translates_and_pads():
    pts = torch.tensor([[5.0, 6.0, 7.0], [40.0, 1.0, 1.0]])
    lbl = torch.tensor([1, 0])
    local, lab = clicks_in_window(pts, lbl, (slice(4, 36), slice(0, 32), slice(0, 32)))
    assert local[0].tolist() == [1.0, 6.0, 7.0] and lab.tolist() == [1, -1]


def test_clicks_reach_the_right_windows_in_local_coordinates():
    net = Recorder()
    img = torch.zeros(1, 1, 64, 32, 32)
    img[0, 0, 50, 10, 20] = 1.0  # marker where the click is
    inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.0, mode="constant")
    inf(img, net, points=[[50, 10, 20]], point_labels=[1])
    seen = 0
    for x, p, lab, _ in net.calls:
        if p is not None and p.shape[1] and (lab == 1).any():
            z, y, w = p[0, 0].long().tolist()
            assert x[0, 0, z, y, w] == 1.0, "the click must land on the same voxel inside the window"
            seen += 1
    assert seen == 1


def test_previous_mask_is_aligned_in_every_window():
    """The mask prompt a clicked window receives is the blended previous result at exactly its place."""
    net = Recorder()
    img = torch.randn(1, 1, 70, 45, 33)
    SAT3DInferer(roi_size=(32, 32, 32), overlap=0.5, mode="gaussian")(img, net, points=[[40, 20, 16]], point_labels=[1])
    prompted = [(emb, prev) for emb, _, _, prev in net.calls if prev is not None]
    assert len(prompted) >= 2, "the click lies in several overlapping windows"
    for emb, prev in prompted:  # automatic result = the image, so the prompt must be sigmoid(own crop)
        torch.testing.assert_close(prev, torch.sigmoid(emb[:, :1]), atol=1e-4, rtol=0)


def test_output_is_metatensor_with_input_geometry_and_small_images_work():
    affine = torch.diag(torch.tensor([0.8, 0.9, 3.0, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.randn(1, 1, 20, 17, 9), affine=affine)
    out = SAT3DInferer(roi_size=(32, 32, 32))(img, build_sat3d("sat3d_tiny").eval())
    assert isinstance(out, MetaTensor) and out.shape == (1, 2, 20, 17, 9)
    assert torch.allclose(out.affine, affine)
    assert float(out[:, 1].min()) >= 0 and float(out[:, 1].max()) <= 1


def test_bad_clicks_raise_clear_errors():
    inf = SAT3DInferer(roi_size=(32, 32, 32))
    net = Recorder()
    img = torch.zeros(1, 1, 32, 32, 32)
    with pytest.raises(ValueError, match="outside the image"):
        inf(img, net, points=[[40, 1, 1]], point_labels=[1])
    with pytest.raises(ValueError, match="labels must be 1"):
        inf(img, net, points=[[4, 1, 1]], point_labels=[2])
    with pytest.raises(ValueError, match=r"\(1, C, D, H, W\)"):
        inf(torch.zeros(2, 1, 32, 32, 32), net)


def test_clicked_windows_only_blanks_windows_without_positive_clicks():
    net = Recorder()
    img = torch.ones(1, 1, 64, 32, 32)  # the stand-in echoes the image: logit 1 everywhere
    out = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.0, mode="constant", clicked_windows_only=True)(
        img, net, points=[[5, 5, 5]], point_labels=[1])
    assert float(out[0, 0, :32].min()) == 1.0, "the clicked window keeps its prediction"
    assert float(out[0, 0, 32:].max()) < -10, "windows without a positive click are background"


@pytest.mark.parametrize("sw_batch_size", [3, 8])
def test_each_window_gets_its_own_clicks_and_windows_are_encoded_in_batches(sw_batch_size):
    """Catches windows receiving another window's click coordinates."""
    net = Recorder()
    img = torch.zeros(1, 1, 70, 45, 40)
    clicks = [[50, 10, 20], [12, 40, 35]]
    for c in clicks:
        img[(0, 0, *c)] = 1.0
    SAT3DInferer(roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=sw_batch_size)(img, net, points=clicks, point_labels=[1, 0])
    windows_with_click = 0
    for x, p, lab, _ in net.calls:
        markers = {tuple(v) for v in (x[0, 0] == 1.0).nonzero().tolist()}
        given = {tuple(p[0, j].long().tolist()) for j in range(p.shape[1]) if lab[0, j] >= 0} if p is not None else set()
        assert given <= markers, "a window may only get clicks inside it, at their local voxel"
        windows_with_click += bool(given)
    assert max(net.encoded) == sw_batch_size and windows_with_click >= 4


def test_cached_session_runs_only_the_new_click_and_undo():
    net = build_sat3d("sat3d_tiny").eval()
    img = torch.randn(1, 1, 40, 36, 34)
    inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=2)
    first = inf(img, net, points=[[5, 6, 7]], point_labels=[1])
    assert inf.last_cache_use == "new"
    session = next(iter(inf._cache.values()))
    enc, dec = session.encoder_calls, session.decoder_calls
    second = inf(img.clone(), net, points=[[5, 6, 7], [30, 30, 30]], point_labels=[1, 0])
    assert inf.last_cache_use == "extended" and session.encoder_calls == enc
    inside = sum(all(s.start <= v < s.stop for s, v in zip(w, (30, 30, 30))) for w in session.windows)
    assert session.decoder_calls == dec + inside
    fresh = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25)(img, net, points=[[5, 6, 7], [30, 30, 30]], point_labels=[1, 0])
    assert torch.equal(second.as_tensor(), fresh.as_tensor()), "a cached session must give what a fresh one gives"
    back = inf(img, net, points=[[5, 6, 7]], point_labels=[1])
    assert inf.last_cache_use == "undo" and torch.equal(back.as_tensor(), first.as_tensor())
    for k in range(3):  # the cache is bounded
        inf(img + k + 1, net)
    assert len(inf._cache) == 2
    off = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=0)
    off(img, net)
    off(img, net)
    assert off.last_cache_use == "new" and not off._cache, "cache_size 0 keeps no session"


def test_cached_session_takes_slicer_requests_that_list_positive_clicks_first():
    """3D Slicer sends every positive click, then every negative one: a positive click made after a negative
    one is not appended at the end of the request.  It must still run as one new click on the cached session."""
    net = build_sat3d("sat3d_tiny").eval()
    img = torch.randn(1, 1, 40, 36, 34)
    p1, n1, p2 = [5, 6, 7], [30, 30, 30], [20, 10, 12]
    inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=2)
    inf(img, net, points=[p1], point_labels=[1])
    inf(img, net, points=[p1, n1], point_labels=[1, 0])
    session = next(iter(inf._cache.values()))
    dec = session.decoder_calls
    out = inf(img, net, points=[p1, p2, n1], point_labels=[1, 1, 0])  # as Slicer lists them
    assert inf.last_cache_use == "extended"
    inside = sum(all(s.start <= v < s.stop for s, v in zip(w, p2)) for w in session.windows)
    assert session.decoder_calls == dec + inside, "only the new click's windows run"
    made = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25)(img, net, points=[p1, n1, p2], point_labels=[1, 0, 1])
    assert torch.equal(out.as_tensor(), made.as_tensor()), "the clicks run in the order they were made"
    inf(img, net, points=[p1, n1], point_labels=[1, 0])  # Slicer's undo of p2
    assert inf.last_cache_use == "undo"
    inf(img, net, points=[p2, n1], point_labels=[1, 0])  # p1 gone: not an extension nor an undo
    assert inf.last_cache_use == "replayed"


def test_prefetch_encodes_windows_near_the_clicks_in_the_background_without_changing_results():
    net = build_sat3d("sat3d_tiny").eval()
    img = torch.randn(1, 1, 80, 72, 40)
    clicks = [[10, 10, 10], [40, 30, 20], [70, 60, 30]]
    inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=2, clicked_windows_only=True, prefetch_windows=3)
    inf(img, net, points=clicks[:1], point_labels=[1])
    session = next(iter(inf._cache.values()))
    clicked = sum(all(s.start <= v < s.stop for s, v in zip(w, clicks[0])) for w in session.windows)
    inf.prefetch_thread.join(timeout=60)
    assert session.encoder_calls == clicked + 3, "three more windows encoded after the answer"
    near = sorted(session._embeddings)
    centre = lambda i: torch.tensor([(w.start + w.stop - 1) / 2 for w in session.windows[i]])  # noqa: E731
    d = lambda i: float(((centre(i) - torch.tensor(clicks[0], dtype=torch.float32)) ** 2).sum())  # noqa: E731
    far = [i for i in range(len(session.windows)) if i not in near]
    assert max(d(i) for i in near) <= min(d(i) for i in far), "the windows nearest to the click come first"
    for n in (2, 3):
        out = inf(img, net, points=clicks[:n], point_labels=[1] * n)
        inf.prefetch_thread.join(timeout=60)
    assert session.encoder_calls == len(set(session._embeddings)), "no window is encoded twice"
    plain = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, clicked_windows_only=True)(
        img, net, points=clicks, point_labels=[1, 1, 1])
    assert torch.equal(out.as_tensor(), plain.as_tensor()), "prefetching must not change the answer"
    before = session.encoder_calls
    inf._prefetch(session, inf._generation - 1)  # a prefetch of an older call stops at once
    assert session.encoder_calls == before
    auto = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=2, prefetch_windows=3)
    auto(img, net)  # the automatic mode encodes every window itself: nothing to prefetch
    assert auto.prefetch_thread is None
    with pytest.raises(ValueError, match="prefetch_windows"):
        SAT3DInferer(prefetch_windows=-1)


def test_prefetch_waits_until_the_answer_is_complete():
    """The prefetch must not compete with the rest of the answer (inverse resampling, writing): it starts at
    answered() or after prefetch_delay."""
    import time

    net = build_sat3d("sat3d_tiny").eval()
    img = torch.randn(1, 1, 80, 72, 40)
    inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=1, clicked_windows_only=True, prefetch_windows=2,
                       prefetch_delay=60.0)
    inf(img, net, points=[[10, 10, 10]], point_labels=[1])
    session = next(iter(inf._cache.values()))
    start = session.encoder_calls
    time.sleep(0.5)
    assert session.encoder_calls == start and inf.prefetch_thread.is_alive(), "nothing before the answer is complete"
    assert inf.answered("pred") == "pred"
    inf.prefetch_thread.join(timeout=60)
    assert session.encoder_calls == start + 2
    quick = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=1, clicked_windows_only=True,
                         prefetch_windows=1, prefetch_delay=0.0)
    quick(img, net, points=[[10, 10, 10]], point_labels=[1])
    quick.prefetch_thread.join(timeout=60)  # no answered(): the delay starts it
    assert next(iter(quick._cache.values())).encoder_calls == start + 1


def test_process_exits_cleanly_while_a_prefetch_runs(tmp_path):
    """A prefetch thread still inside torch when the interpreter shuts down aborts the process (SIGABRT):
    the inferer stops it at exit."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import torch\n"
        "from sat3d import build_sat3d\n"
        "from sat3d.inferer import SAT3DInferer\n"
        "net = build_sat3d('sat3d_tiny').eval()\n"
        "inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.5, cache_size=1, clicked_windows_only=True,\n"
        "                   prefetch_windows=1000, prefetch_delay=0.0)\n"
        "inf(torch.randn(1, 1, 160, 160, 96), net, points=[[10, 10, 10]], point_labels=[1])\n"
        "print('done', flush=True)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]


def test_clicks_carried_in_metadata_reach_the_network():
    """Catches an inferer that ignores the clicks ClicksFromRequestd puts on the image (bundle / MONAI Label path)."""
    from sat3d.transforms import CLICKS_META_KEY

    net = Recorder()
    img = MetaTensor(torch.zeros(1, 1, 64, 40, 36))
    img[0, 0, 40, 20, 30] = 1.0
    img.meta[CLICKS_META_KEY] = {"points": torch.tensor([[40.0, 20.0, 30.0]]), "labels": torch.tensor([1])}
    SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, sw_batch_size=2)(img, net)
    hits = 0
    for x, p, lab, _ in net.calls:
        for i in range(x.shape[0]):
            if p is not None and (lab[i] == 1).any():
                z, y, w = p[i, (lab[i] == 1).nonzero()[0, 0]].long().tolist()
                assert x[i, 0, z, y, w] == 1.0
                hits += 1
    assert hits >= 1, "the network never saw the metadata click"


@pytest.mark.parametrize(
    "request_form",
    [
        {"foreground": [[5, 6, 7]], "background": [[20, 3, 4]]},  # MONAI Label API
        {"tumour": [[5, 6, 7]], "background": [[20, 3, 4]], "label": "tumour"},  # Slicer plugin, deepedit with labels
        {"tumor": [[5, 6, 7]], "background": [[20, 3, 4]], "label": "tumor"},
        {"lesion": [[5, 6, 7]], "background": [[20, 3, 4]]},  # label name without the 'label' key
    ],
)
def test_every_monailabel_click_form_is_read(request_form):
    """Slicer's deepedit clicks arrive keyed by label name; all forms give the same clicks."""
    from sat3d.transforms import CLICKS_META_KEY, ClicksFromRequestd

    img = MetaTensor(torch.zeros(1, 32, 32, 32), affine=torch.eye(4))
    img.meta["original_affine"] = torch.eye(4)
    out = ClicksFromRequestd("image")({"image": img, **request_form})["image"].meta[CLICKS_META_KEY]
    assert out["points"].tolist() == [[5.0, 6.0, 7.0], [20.0, 3.0, 4.0]] and out["labels"].tolist() == [1, 0]


@pytest.mark.parametrize("value, expected", [("false", False), ("False", False), ("true", True), (False, False), (True, True),
                                             (1, True), (0, False)])
def test_boolean_settings_from_the_command_line(value, expected):
    """``--clicked_windows_only false`` arrives as the string 'false', which bool() would take as true."""
    from sat3d.inferer import SAT3DInferer
    from sat3d.session import InteractiveSession

    assert SAT3DInferer((32, 32, 32), clicked_windows_only=value).clicked_windows_only is expected
    assert InteractiveSession(build_sat3d("sat3d_tiny"), clicked_windows_only=value, eager=value).eager is expected
    for bad in ("maybe", None):
        with pytest.raises(ValueError):
            SAT3DInferer((32, 32, 32), clicked_windows_only=bad)


def test_auto_clicked_windows_per_request():
    """With "auto", a request with clicks gets the clicked windows only and one without clicks on the same
    (cached) image the automatic mode, not the clicked session emptied."""
    net = build_sat3d("sat3d_tiny").eval()
    img = torch.randn(1, 1, 70, 36, 34)
    inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=2, clicked_windows_only="auto")
    clicked = inf(img, net, points=[[5, 6, 7]], point_labels=[1])
    session = next(iter(inf._cache.values()))
    assert session.clicked_mode is True and session.encoder_calls < len(session.windows)
    assert (clicked[0, 0, 60:] < -10).all(), "far from the click the clicked windows leave background"
    auto = inf(img, net)
    assert inf.last_cache_use == "new" and next(iter(inf._cache.values())).clicked_mode is False
    ref = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25)(img, net)
    assert torch.equal(auto.as_tensor(), ref.as_tensor())


def test_auto_clicks_after_an_automatic_request_get_the_clicked_windows():
    """The reverse order: with "auto", clicks on an image whose automatic result is cached must get what a
    request with clicks gets (the clicked windows only, as the evaluation scores it), not clicks run on top of
    the automatic session; the result cannot depend on the cache's history."""
    net = build_sat3d("sat3d_tiny").eval()
    img = torch.randn(1, 1, 70, 36, 34)
    inf = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=2, clicked_windows_only="auto")
    inf(img, net)
    assert next(iter(inf._cache.values())).clicked_mode is False
    clicked = inf(img, net, points=[[5, 6, 7]], point_labels=[1])
    assert inf.last_cache_use == "new" and next(iter(inf._cache.values())).clicked_mode is True
    ref = SAT3DInferer(roi_size=(32, 32, 32), overlap=0.25, cache_size=2, clicked_windows_only="auto")(
        img, net, points=[[5, 6, 7]], point_labels=[1])
    assert torch.equal(clicked.as_tensor(), ref.as_tensor())
    more = inf(img, net, points=[[5, 6, 7], [50, 20, 20]], point_labels=[1, 0])  # a further click extends it
    assert inf.last_cache_use == "extended" and more.shape == clicked.shape
