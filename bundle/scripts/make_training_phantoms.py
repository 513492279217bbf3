"""Write procedural training phantoms (:func:`sat3d.phantoms.random_phantom`) and a datalist for them.

Usage: ``python bundle/scripts/make_training_phantoms.py OUTPUT_DIR [COUNT=40] [SEED=1000] [WEIGHT=0.2]``.
Writes ``phantom_NNN_image.nii.gz`` / ``phantom_NNN_label.nii.gz`` and ``datalist.json`` (a ``training``
list: ``target_classes`` [1], modality CT or MR, sampling ``weight``).  Existing files are kept.  Each
phantom draws its own size and spacing; none reproduces the demo phantom.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from sat3d.phantoms import random_phantom


def main(out: str, count: str = "40", seed: str = "1000", weight: str = "0.2") -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(int(count)):
        rng = np.random.default_rng(int(seed) + k)
        xy = float(rng.uniform(0.8, 1.3))
        spacing = (xy, xy, float(rng.choice([1.0, 1.5, 2.0, 3.0])))
        shape = (int(round(180 / xy)), int(round(180 / xy)), int(round(rng.uniform(120, 180) / spacing[2])))
        img_p, lab_p = root / f"phantom_{k:03d}_image.nii.gz", root / f"phantom_{k:03d}_label.nii.gz"
        img, lab, affine = random_phantom(rng, shape, spacing)
        modality = "CT" if img.min() < -500 else "MR"
        if not (img_p.exists() and lab_p.exists()):
            nib.save(nib.Nifti1Image(img, affine), str(img_p))
            nib.save(nib.Nifti1Image(lab, affine), str(lab_p))
        entries.append({"image": str(img_p.resolve()), "label": str(lab_p.resolve()), "target_classes": [1],
                        "patient": f"phantom_{k:03d}", "dataset": "sat3d_phantoms", "modality": modality,
                        "sequence": modality, "weight": float(weight)})
        print(f"{img_p.name}: {modality}, shape {shape}, spacing {spacing}, lesion {int(lab.sum())} voxels", flush=True)
    (root / "datalist.json").write_text(json.dumps({"training": entries}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:5])
