"""Procedural training phantoms: a lesion inside an unlabelled organ, reproducible, and the script's datalist."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE
from sat3d.phantoms import random_phantom
from scipy import ndimage

SHAPE, SPACING = (96, 96, 48), (1.5, 1.5, 3.0)


def _shell(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)


def test_same_seed_same_phantom_and_other_seeds_differ():
    a = random_phantom(np.random.default_rng(3), SHAPE, SPACING)
    b = random_phantom(np.random.default_rng(3), SHAPE, SPACING)
    c = random_phantom(np.random.default_rng(4), SHAPE, SPACING)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == SHAPE and a[1].dtype == np.uint8 and a[0].dtype == np.float32
    np.testing.assert_allclose(np.diag(a[2])[:3], SPACING)


@pytest.mark.parametrize("seed", range(8))
def test_the_label_is_one_lesion_inside_an_organ_that_is_not_labelled(seed):
    img, lab, _ = random_phantom(np.random.default_rng(seed), SHAPE, SPACING)
    lesion = lab > 0
    assert lesion.any()
    assert set(np.unique(lab).tolist()) == {0, 1}
    cc, n = ndimage.label(lesion)
    assert np.bincount(cc.ravel())[1:].max() >= 0.9 * lesion.sum()  # one lesion (lobulation may split off a voxel)
    shell = _shell(lesion)
    ct = img.min() < -500
    # the lesion sits in an organ: the tissue around it is soft tissue (CT) rather than fat or air
    if ct:
        assert (img[shell] < -50).mean() < 0.5
    assert not (lab[shell] > 0).any()  # the host organ is unlabelled
    # and the phantom holds more than the lesion: a body with organs, fat and air (or dark background in MR)
    assert (img < (-500 if ct else 30)).mean() > 0.05


def test_lesions_differ_from_their_host_organ():
    gaps = []
    for seed in range(10):
        img, lab, _ = random_phantom(np.random.default_rng(seed), SHAPE, SPACING, mr_prob=0.0)
        lesion = lab > 0
        gaps.append(abs(float(np.median(img[lesion]) - np.median(img[_shell(lesion)]))))
    assert img.min() < -500  # mr_prob=0: CT (air at -1000 HU)
    assert np.median(gaps) >= 20.0, gaps  # Hounsfield units; lesions are drawn 20-120 HU from their organ


def test_script_writes_volumes_and_a_datalist_and_keeps_existing_files(tmp_path):
    script = str(BUNDLE / "scripts" / "make_training_phantoms.py")
    run = subprocess.run([sys.executable, script, str(tmp_path), "2", "5", "0.3"], capture_output=True, text=True, check=True)
    entries = json.loads((tmp_path / "datalist.json").read_text())["training"]
    assert len(entries) == 2 and {e["weight"] for e in entries} == {0.3}
    for e in entries:
        img, lab = nib.load(e["image"]), nib.load(e["label"])
        assert img.shape == lab.shape and e["target_classes"] == [1] and e["modality"] in ("CT", "MR")
        np.testing.assert_allclose(img.affine, lab.affine)
    first = tmp_path / "phantom_000_image.nii.gz"
    first.write_bytes(b"kept")  # not overwritten on a second run
    subprocess.run([sys.executable, script, str(tmp_path), "2", "5", "0.3"], capture_output=True, text=True, check=True)
    assert first.read_bytes() == b"kept", run.stdout


def _organs_of(monkeypatch, **kwargs) -> list[np.ndarray]:
    """The organ masks random_phantom draws (recorded from its organ painter)."""
    import sat3d.phantoms as ph

    seen = []

    def spy(*args, **kw):
        organs = real(*args, **kw)
        seen.append([m for m, _ in organs])
        return organs

    real = ph._draw_organs
    monkeypatch.setattr(ph, "_draw_organs", spy)
    random_phantom(np.random.default_rng(kwargs.pop("seed")), SHAPE, SPACING, **kwargs)
    return seen[0]


@pytest.mark.parametrize("disjoint", [False, True])
def test_disjoint_organs_never_overlap_and_default_organs_do(monkeypatch, disjoint):
    overlaps = []
    for seed in range(6):
        organs = _organs_of(monkeypatch, seed=seed, disjoint_organs=disjoint)
        overlaps.append(any((organs[i] & organs[j]).any() for i in range(len(organs)) for j in range(i + 1, len(organs))))
    if disjoint:
        assert not any(overlaps)
    else:  # the default keeps the old phantoms (organs drawn over each other)
        assert any(overlaps)


def test_organ_min_axis_makes_organs_larger(monkeypatch):
    small = [m.sum() for s in range(4) for m in _organs_of(monkeypatch, seed=s, organ_min_axis_mm=10.0)]
    large = [m.sum() for s in range(4) for m in _organs_of(monkeypatch, seed=s, organ_min_axis_mm=25.0)]
    assert min(large) > 2 * min(small) and np.median(large) > np.median(small)


def _lesion_volumes(lab: np.ndarray) -> list[float]:
    cc, _ = ndimage.label(lab > 0)
    sizes = np.bincount(cc.ravel())[1:] * float(np.prod(SPACING))
    return [float(v) for v in sizes if v >= 10 * np.prod(SPACING)]  # lobulation may split off a few voxels


def test_lesion_count_and_radius_are_drawn_from_their_ranges():
    kw = dict(disjoint_organs=True, organ_min_axis_mm=25.0, mr_prob=0.0)
    counts, vols = [], {}
    for r_range in ((3.0, 3.5), (10.0, 12.0)):
        vols[r_range] = []
        for seed in range(6):
            _, lab, _ = random_phantom(np.random.default_rng(seed), SHAPE, SPACING, lesion_count=(3, 3),
                                       lesion_radius_mm=r_range, **kw)
            v = _lesion_volumes(lab)
            counts.append(len(v))
            vols[r_range] += v
    assert max(counts) <= 3 and max(counts) >= 2  # up to 3 lesions (they may touch and merge)
    # a lesion's semi-axes are 0.65-1.0 times its radius (lobulated by up to about 18 %)
    assert max(vols[(3.0, 3.5)]) < 4 / 3 * np.pi * (3.5 * 1.3) ** 3
    assert np.median(vols[(10.0, 12.0)]) > 4 / 3 * np.pi * (10 * 0.65) ** 3


@pytest.mark.parametrize("kwargs", [{"lesion_count": (2, 1)}, {"lesion_count": (-1, 1)}, {"lesion_radius_mm": (0.0, 3.0)},
                                    {"lesion_radius_mm": (5.0, 4.0)}])
def test_bad_lesion_ranges_raise(kwargs):
    with pytest.raises(ValueError, match="lesion_count"):
        random_phantom(np.random.default_rng(0), SHAPE, SPACING, **kwargs)


def test_no_lesion_is_allowed():
    _, lab, _ = random_phantom(np.random.default_rng(0), SHAPE, SPACING, lesion_count=(0, 0))
    assert not lab.any()


def test_script_passes_the_phantom_options_to_the_generator(tmp_path):
    script = str(BUNDLE / "scripts" / "make_training_phantoms.py")
    subprocess.run([sys.executable, script, str(tmp_path / "none"), "1", "5", "--lesions", "0", "0"], check=True,
                   capture_output=True, text=True)
    subprocess.run([sys.executable, script, str(tmp_path / "one"), "1", "5"], check=True, capture_output=True, text=True)
    labels = {k: np.asarray(nib.load(str(tmp_path / k / "phantom_000_label.nii.gz")).dataobj) for k in ("none", "one")}
    assert not labels["none"].any() and labels["one"].any()  # same seed: only --lesions differs
    bad = subprocess.run([sys.executable, script, str(tmp_path / "bad"), "1", "5", "--lesion-radius-mm", "5", "4"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "lesion_radius_mm" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_narrow_body_still_gets_organs():
    """A cavity under 1/0.7 of the smallest organ semi-axis used to make the organ draw raise ValueError."""
    img, lab, _ = random_phantom(np.random.default_rng(0), (60, 60, 30), (1.0, 1.0, 2.0))
    assert img.shape == (60, 60, 30) and lab.shape == img.shape
