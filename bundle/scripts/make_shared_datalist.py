"""Write the datalist of the shipped weights' training run from ``shared/data/real/datalist.json``.

Usage: ``python bundle/scripts/make_shared_datalist.py SHARED_DATA_DIR OUTPUT_JSON``

The split is by patient (every scan of a patient on one side) and is the one listed in the model card
(``bundle/docs/README.md``).  Each entry names its tumour classes (``target_classes``: their union is
the target); scans without a tumour label (spleen crop, TotalSegmentator fixtures) get ``[]`` and serve
only as host anatomy for synthetic lesions.  The data are not copied: paths point into SHARED_DATA_DIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: patients held out of training (validation / model-card evaluation)
VALIDATION_PATIENTS = {"STS_002", "LUNG1-003", "brain2", "breast1", "TCGA-FG-6692", "openkbp_pt_22"}

#: (dataset, modality) -> tumour classes; brain MR: T1c = tumour core (1, 4), FLAIR = whole tumour (1, 2, 4)
CLASSES = {
    "brainlesion_tcga_silver": {"T1c": [1, 4], "FLAIR": [1, 2, 4]},
    "qin_headneck_pet": [1, 2],
    "nsclc_radiomics_pmt": [1, 2],
    "mirp_sts_raw": [1],
    "msd_spleen_crop": [],
    "totalsegmentator_fixtures": [],
}
#: sampling weight per dataset (OpenKBP PTVs include margins: sampled less; host-only scans: less)
WEIGHTS = {"openkbp_hn_ptv": 0.4, "msd_spleen_crop": 0.5, "totalsegmentator_fixtures": 0.5}


def patient_of(case: dict) -> str:
    if case["dataset"].startswith("mirp_sts"):
        return case["case"][:7]
    if case["dataset"] == "openkbp_hn_ptv":
        return f"openkbp_{case['case']}"
    return case["case"]


def build(shared: Path) -> dict:
    cases = json.loads((shared / "datalist.json").read_text())
    out: dict = {"training": [], "validation": []}
    for c in cases:
        spec = CLASSES.get(c["dataset"], [1])
        for modality, path in c["image"].items():
            if isinstance(spec, dict):
                if modality not in spec:
                    continue
                classes = spec[modality]
            else:
                classes = spec
            pid = patient_of(c)
            item = {
                "image": str((shared / path).resolve()),
                "label": str((shared / c["label"]).resolve()),
                "target_classes": classes,
                "patient": pid,
                "dataset": c["dataset"],
                "modality": c["modality"],
                "sequence": modality,
                "weight": WEIGHTS.get(c["dataset"], 1.0),
            }
            split = "validation" if pid in VALIDATION_PATIENTS else "training"
            if split == "validation" and not classes:
                continue
            out[split].append(item)
    return out


def main(shared: str, target: str) -> None:
    data = build(Path(shared))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(json.dumps(data, indent=1))
    for k, v in data.items():
        print(f"{k}: {len(v)} scans of {len({x['patient'] for x in v})} patients")


if __name__ == "__main__":
    main(*sys.argv[1:3])
