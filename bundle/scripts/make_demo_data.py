"""Write a licence-clean synthetic demo volume (an abdominal CT phantom with one liver lesion) and a clicks file.

Usage: ``python bundle/scripts/make_demo_data.py [OUTPUT_DIR]`` (default ``sample_data``).  Nothing is
overwritten: existing files are kept.  The phantom is generated here; it contains no patient data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def make_phantom(shape=(160, 160, 96), spacing=(1.0, 1.0, 2.0), seed=7, lesion_radius_mm=12.0):
    """A contrast-enhanced abdominal CT phantom (Hounsfield units) with one liver lesion.

    Body outline with subcutaneous fat, abdominal wall muscle, visceral fat with bowel loops, an enhancing
    liver (portal venous phase, 110 HU), spleen, kidneys, aorta and cava, and a vertebra (cortical rim and
    cancellous bone); the lesion is a hypodense metastasis (50 HU, radius 12 mm = 7.2 ml) in the liver.
    ``lesion_radius_mm`` changes the lesion's size (the demo's is 12 mm; tests use others to check that a
    mask follows the lesion rather than a typical size).  Slight blur (the scanner's point spread) and
    spatially correlated noise are added.  Like a real CT, its intensities span air, fat, soft tissue and
    bone, so SAT3D's intensity normalisation sees a realistic range (a uniform ellipsoid would turn the
    noise into the main contrast).

    Returns:
        image (float32, HU), lesion mask (uint8), affine (RAS, mm; origin at the volume centre) and the
        lesion centre in voxels.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) * sp for n, sp in zip(shape, spacing)], indexing="ij"), -1)
    centre = np.array([n * sp / 2 for n, sp in zip(shape, spacing)])
    x, y, z = np.moveaxis(grid - centre, -1, 0)  # mm from the centre (x: left-right, y: front-back, z: feet-head)

    def ellipsoid(cx, cy, cz, ax, ay, az):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1

    def column(cx, cy, ax, ay):  # an elliptic cylinder along z
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1

    img = np.full(shape, -1000.0, np.float32)  # air
    body, wall, cavity = column(0, 0, 70, 52), column(0, 0, 60, 42), column(0, 2, 52, 35)
    img[body] = -100.0  # subcutaneous fat
    img[wall] = 50.0  # abdominal wall muscle
    img[cavity] = -90.0  # visceral fat
    bowel = ndimage.gaussian_filter(rng.standard_normal(shape), (6, 6, 3)) > 0.02
    img[cavity & bowel] = 30.0  # bowel loops
    img[ellipsoid(-22, -2, 0, 30, 30, 80) & cavity] = 110.0  # liver
    img[ellipsoid(34, 14, 10, 12, 16, 40) & cavity] = 120.0  # spleen
    for kx in (-20, 22):
        img[ellipsoid(kx, 22, 0, 9, 12, 40)] = 160.0  # kidneys
    img[column(-6, 12, 8, 8)] = 180.0  # aorta
    img[column(-22, 8, 10, 9)] = 150.0  # inferior vena cava
    img[column(0, 36, 14, 12)] = 700.0  # vertebral body, cortical rim
    img[column(0, 36, 11, 9)] = 250.0  # cancellous bone
    img[column(0, 52, 6, 5) & body] = 600.0  # spinous process
    lesion_c = centre + np.array([-28.0, -8.0, 6.0])
    lesion = np.linalg.norm(grid - lesion_c, axis=-1) <= float(lesion_radius_mm)
    img[lesion] = 50.0  # hypodense metastasis
    img = ndimage.gaussian_filter(img, 0.7)
    img += 1.6 * ndimage.gaussian_filter(rng.normal(0.0, 20.0, shape), 0.8)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -centre
    lesion_voxel = np.rint(lesion_c / np.array(spacing)).astype(int).tolist()
    return img.astype(np.float32), lesion.astype(np.uint8), affine, lesion_voxel


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
