"""Write procedural training phantoms (:func:`sat3d.phantoms.random_phantom`) and a datalist for them.

Usage: ``python bundle/scripts/make_training_phantoms.py OUTPUT_DIR [COUNT=40] [SEED=1000] [WEIGHT=0.2]
[--lesions MIN MAX] [--lesion-radius-mm MIN MAX] [--organ-min-axis-mm MM] [--disjoint-organs]``; the options
are :func:`~sat3d.phantoms.random_phantom`'s (defaults: its defaults, the phantoms of runs 19-28; the model
card's seventeenth session used ``--lesions 1 3 --lesion-radius-mm 6 30 --organ-min-axis-mm 20
--disjoint-organs`` for lesions large enough to see at 1.5 mm).  Writes ``phantom_NNN_image.nii.gz`` /
``phantom_NNN_label.nii.gz`` and ``datalist.json`` (a ``training`` list: ``target_classes`` [1], modality CT
or MR, sampling ``weight``).  Existing files are kept.  Each phantom draws its own size and spacing; none
reproduces the demo phantom.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from sat3d.phantoms import random_phantom


def main(out: str, count: str = "40", seed: str = "1000", weight: str = "0.2", **phantom_kwargs) -> None:
    root = Path(out)
    entries = []
    for k in range(int(count)):
        rng = np.random.default_rng(int(seed) + k)
        xy = float(rng.uniform(0.8, 1.3))
        spacing = (xy, xy, float(rng.choice([1.0, 1.5, 2.0, 3.0])))
        shape = (int(round(180 / xy)), int(round(180 / xy)), int(round(rng.uniform(120, 180) / spacing[2])))
        img_p, lab_p = root / f"phantom_{k:03d}_image.nii.gz", root / f"phantom_{k:03d}_label.nii.gz"
        img, lab, affine = random_phantom(rng, shape, spacing, **phantom_kwargs)
        modality = "CT" if img.min() < -500 else "MR"
        root.mkdir(parents=True, exist_ok=True)  # after the first phantom: bad options leave nothing behind
        if not (img_p.exists() and lab_p.exists()):
            nib.save(nib.Nifti1Image(img, affine), str(img_p))
            nib.save(nib.Nifti1Image(lab, affine), str(lab_p))
        entries.append({"image": str(img_p.resolve()), "label": str(lab_p.resolve()), "target_classes": [1],
                        "patient": f"phantom_{k:03d}", "dataset": "sat3d_phantoms", "modality": modality,
                        "sequence": modality, "weight": float(weight)})
        print(f"{img_p.name}: {modality}, shape {shape}, spacing {spacing}, lesion {int(lab.sum())} voxels", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "datalist.json").write_text(json.dumps({"training": entries}, indent=2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("count", nargs="?", default="40")
    ap.add_argument("seed", nargs="?", default="1000")
    ap.add_argument("weight", nargs="?", default="0.2")
    ap.add_argument("--lesions", nargs=2, type=int, metavar=("MIN", "MAX"), dest="lesion_count")
    ap.add_argument("--lesion-radius-mm", nargs=2, type=float, metavar=("MIN", "MAX"))
    ap.add_argument("--organ-min-axis-mm", type=float)
    ap.add_argument("--disjoint-organs", action="store_true", default=None)
    args = {k: v for k, v in vars(ap.parse_args()).items() if v is not None}  # unset: the generator's defaults
    try:
        main(args.pop("out"), args.pop("count"), args.pop("seed"), args.pop("weight"), **args)
    except ValueError as e:  # bad ranges: the generator checks them before the first file is written
        ap.error(str(e))
