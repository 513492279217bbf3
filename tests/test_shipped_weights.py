"""The shipped weights segment the demo phantom: the README's first command, run as a new user would.

These tests check trained behaviour. While no weights are shipped they are marked as expected failures
(strict: they can never pass without trained weights, and they turn into real tests, failing loudly if the
weights fall short, as soon as ``bundle/models/model.pt`` exists).
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE, REPO, demo_data_module, dice
from sat3d.weights import read_config

WEIGHTS = BUNDLE / "models" / "model.pt"

pytestmark = pytest.mark.xfail(
    not WEIGHTS.is_file(), strict=True,
    reason="no trained weights shipped yet (issue 8: the first CPU training run did not reach the demo thresholds)",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data = root / "sample_data"
    subprocess.run([sys.executable, str(BUNDLE / "scripts" / "make_demo_data.py"), str(data)], check=True, capture_output=True)
    _, lesion, _, _ = demo_data_module().make_phantom()
    return root, data, lesion


def _readme_command(data, out, *extra):
    # the README's demo command, without --require_weights or --ckpt_path: the shipped weights are used
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--output_dir", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)


def test_weights_are_shipped_small_and_carry_their_configuration():
    assert WEIGHTS.is_file(), f"{WEIGHTS} is missing: the bundle must ship trained weights"
    assert WEIGHTS.stat().st_size <= 25 * 1024 * 1024
    cfg = read_config(WEIGHTS)
    for key in ("preset", "roi_size", "spacing", "intensity", "confidence_threshold", "mask_threshold", "version", "training"):
        assert key in cfg, key
    assert cfg["preset"] in ("sat3d_base", "sat3d_detail", "sat3d_geodesic") and cfg["training"]


def test_demo_with_one_click_and_automatic(demo):
    root, data, lesion = demo
    clicked = _readme_command(data, root / "clicked", "--clicks_file", str(data / "clicks.json"))
    assert clicked.returncode == 0, clicked.stderr[-3000:]
    text = clicked.stdout + clicked.stderr
    assert "phantom_ct.nii.gz:" in text and " ml in " in text and "centre [" in text, "the run must say where the mask is and its volume"
    mask = np.asarray(nib.load(str(root / "clicked" / "phantom_ct_mask.nii.gz")).dataobj)
    dice_click = dice(mask, lesion)
    assert dice_click >= 0.8, f"Dice with the demo's one click {dice_click:.3f} < 0.8"
    auto = _readme_command(data, root / "auto")
    assert auto.returncode == 0, auto.stderr[-3000:]
    mask = np.asarray(nib.load(str(root / "auto" / "phantom_ct_mask.nii.gz")).dataobj)
    dice_auto = dice(mask, lesion)
    assert dice_auto >= 0.5, f"automatic mode Dice {dice_auto:.3f} < 0.5"
    rows = json.loads(next((root / "clicked").glob("results-*.json")).read_text())
    lesion_ml = lesion.sum() * 2.0 / 1000.0  # phantom voxels are 1 x 1 x 2 mm
    assert rows[0]["volume_ml"] == pytest.approx(lesion_ml, rel=0.35)


def click_dice_by_lesion_size(weights, folder, radii_mm=(6.0, 12.0, 18.0)):
    """One click at the centre of the demo phantom's liver lesion, drawn with three radii: (Dice, mask ml) each."""
    from sat3d.session import FileSession

    mod = demo_data_module()
    out = []
    for r in radii_mm:
        img, lesion, affine, vox = mod.make_phantom(lesion_radius_mm=r)
        path = str(folder / f"phantom_r{r:g}.nii.gz")
        nib.save(nib.Nifti1Image(img, affine), path)
        fs = FileSession(str(weights))
        fs.set_image(path)
        fs.add_click(vox, True)
        mask = np.asarray(fs.mask)
        out.append((dice(mask, lesion), float(mask.sum()) * 2.0 / 1000.0))
    return out


def test_a_click_mask_follows_the_lesion_size_not_a_typical_size(tmp_path):
    """A mask of one typical size around the click can pass the demo's single lesion (a 2,000-voxel prior
    scored Dice 0.86 there, see the model card); lesions of 6, 12 and 18 mm radius (0.9, 7.2 and 24 ml)
    cannot all be passed that way."""
    results = click_dice_by_lesion_size(WEIGHTS, tmp_path)
    dices, volumes = [d for d, _ in results], [v for _, v in results]
    assert min(dices) >= 0.6, results
    assert volumes[0] < volumes[1] < volumes[2] and volumes[2] > 8 * volumes[0], results
