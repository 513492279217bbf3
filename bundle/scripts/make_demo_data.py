"""Write a licence-clean synthetic demo volume (a CT-like phantom with one lesion) and a clicks file.

Usage: ``python bundle/scripts/make_demo_data.py [OUTPUT_DIR]`` (default ``sample_data``).  Nothing is
overwritten: existing files are kept.  The phantom is generated here; it contains no patient data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def make_phantom(shape=(160, 160, 96), spacing=(1.0, 1.0, 2.0), seed=7):
    """Body ellipsoid (soft tissue ~40 HU) in air (-1000 HU) with a 'lesion' (~90 HU, radius 12 mm)."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij"), -1)
    centre = np.array([s * sp / 2 for s, sp in zip(shape, spacing)])
    body = (((idx - centre) / (centre * [0.8, 0.6, 0.9])) ** 2).sum(-1) <= 1
    lesion_c = centre + [18.0, -10.0, 6.0]
    lesion = np.linalg.norm(idx - lesion_c, axis=-1) <= 12.0
    img = np.full(shape, -1000.0, np.float32)
    img[body] = 40.0
    img[lesion] = 90.0
    img += rng.normal(0, 12.0, shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -centre
    lesion_voxel = np.rint(lesion_c / np.array(spacing)).astype(int).tolist()
    return img, lesion.astype(np.uint8), affine, lesion_voxel


def main(out: str = "sample_data") -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    img_path, clicks_path = root / "phantom_ct.nii.gz", root / "clicks.json"
    img, _, affine, lesion_voxel = make_phantom()
    if img_path.exists():
        print(f"{img_path} exists; kept")
    else:
        nib.save(nib.Nifti1Image(img, affine), str(img_path))
        print(f"wrote {img_path} (synthetic phantom, no patient data)")
    if clicks_path.exists():
        print(f"{clicks_path} exists; kept")
    else:
        clicks_path.write_text(json.dumps({"phantom_ct.nii.gz": {"space": "voxel", "positive": [lesion_voxel]}}, indent=2))
        print(f"wrote {clicks_path} (one positive click in the lesion)")


if __name__ == "__main__":
    main(*sys.argv[1:2])
