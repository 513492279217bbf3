"""Datalists (MSD style) with checks before training, and per-class binary targets."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["load_datalist", "RandSelectTargetd", "SelectTargetd"]


def _check_pair(image: Path, label: Path, target_labels: Sequence[int] | None, where: str, host_only: bool = False) -> None:
    for p, kind in ((image, "image"), (label, "label")):
        if not p.is_file():
            raise ValueError(f"{where}: {kind} file {p} does not exist.")
    try:
        img_h, lab = nib.load(str(image)), nib.load(str(label))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{where}: cannot read {image} / {label}: {e}") from e
    if img_h.shape[:3] != lab.shape[:3]:
        raise ValueError(f"{where}: image {image.name} has shape {img_h.shape[:3]} but label {label.name} has {lab.shape[:3]}.")
    if not np.allclose(img_h.affine, lab.affine, atol=1e-3):
        raise ValueError(f"{where}: image {image.name} and label {label.name} have different affines (geometry).")
    if host_only:
        return
    values = np.unique(np.asarray(lab.dataobj))
    wanted = [v for v in values if v != 0 and (target_labels is None or int(v) in target_labels)]
    if not wanted:
        raise ValueError(
            f"{where}: label {label} is empty (no voxel of classes {list(target_labels) if target_labels else 'any'})."
        )


def load_datalist(
    dataset_dir: str,
    datalist: str,
    key: str = "training",
    target_labels: Sequence[int] | None = None,
    check: bool = True,
) -> list[dict[str, Any]]:
    """Read an MSD-style datalist and check every case before training starts.

    The datalist is JSON ``{"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
    "validation": [...]}`` with paths relative to ``dataset_dir`` (absolute paths are kept).  A case may name
    its own ``"target_classes"`` (label values whose union is the tumour); ``[]`` marks a scan without a
    tumour label, used only as host anatomy for synthetic lesions.

    Args:
        dataset_dir: root of the relative paths.
        datalist: path of the JSON file.
        key: list to read (``training`` / ``validation`` / ``test``).
        target_labels: label values used as targets; a case must contain at least one.
        check: verify files exist, image and label shapes/affines match and labels are not empty.

    Returns:
        list of ``{"image": abs path, "label": abs path, ...}``.

    Raises:
        ValueError: naming the datalist, the case and the problem.
    """
    path = Path(datalist)
    if not path.is_file():
        raise ValueError(f"datalist {path} does not exist.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"datalist {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or key not in data or not isinstance(data[key], list):
        raise ValueError(f"datalist {path} has no list under {key!r} (keys: {sorted(data) if isinstance(data, dict) else '-'}).")
    if not data[key]:
        raise ValueError(f"datalist {path}: the {key!r} list is empty.")
    root = Path(dataset_dir)
    items = []
    for i, item in enumerate(data[key]):
        where = f"datalist {path}, {key}[{i}]"
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise ValueError(f"{where} must be an object with 'image' and 'label'.")
        image, label = root / item["image"], root / item["label"]
        classes = item.get("target_classes")
        if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, int) for c in classes)):
            raise ValueError(f"{where}: 'target_classes' must be a list of label values, got {classes!r}.")
        if check:
            _check_pair(image, label, classes if classes else target_labels, where, host_only=classes == [])
        items.append({**item, "image": str(image), "label": str(label)})
    return items


class SelectTargetd(MapTransform):
    """Turn a multi-class label into a binary target of one class (the first of ``target_labels`` present).

    A case whose data dict holds ``target_classes`` (see :func:`load_datalist`) gets the union of those
    classes instead (all background for ``[]``).
    """

    def __init__(self, keys: KeysCollection, target_labels: Sequence[int] = (1,)) -> None:
        super().__init__(keys)
        if not target_labels:
            raise ValueError("target_labels must name at least one label value.")
        self.target_labels = [int(v) for v in target_labels]

    def choose(self, present: list[int]) -> int:
        return present[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            if d.get("target_classes") is not None:
                classes = torch.as_tensor([int(c) for c in d["target_classes"]], dtype=torch.float32)
                t = torch.as_tensor(lab)
                binary = torch.isin(t.float(), classes.to(t.device)).to(torch.float32)
                d[key] = type(lab)(binary, meta=dict(lab.meta)) if hasattr(lab, "meta") else binary
                d["target_label"] = -1
                continue
            present = [v for v in self.target_labels if bool((lab == v).any())]
            chosen = self.choose(present) if present else self.target_labels[0]
            d[key] = (lab == chosen).to(torch.float32) if isinstance(lab, torch.Tensor) else (lab == chosen).astype(np.float32)
            d["target_label"] = chosen
        return d


class RandSelectTargetd(Randomizable, SelectTargetd):
    """Like :class:`SelectTargetd` but picks one of the present classes at random (training)."""

    def choose(self, present: list[int]) -> int:
        return int(self.R.choice(present))

    def randomize(self, data: Any = None) -> None:  # noqa: D102 - choice is drawn in choose()
        pass
