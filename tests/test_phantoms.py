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
