"""The authors' preprocessing, for their converted weights (``intensity: window_zscore_positive``).

Their inference script z-normalises each 128^3 crop over its voxels > 0 (mean and *unbiased* std, applied to
every voxel) after clamping CT to [-1000, 1000]; for evaluation it crops around the label's bounding-box
centre, padding with 0.  :func:`zscore_positive` is what the bundle applies to every window of a volume when
it runs converted weights; :func:`authors_crop` reproduces their evaluation crop exactly (to compare with
their reported numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["zscore_positive", "crop_start_around_label", "authors_crop"]


def zscore_positive(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Z-normalise ``x`` with the mean and unbiased std of its voxels > 0 (all voxels are transformed).

    A window without positive voxels (or with one) is returned centred on 0 without scaling.
    """
    x = x.float()
    sel = x[x > 0]
    if sel.numel() < 2:
        return x - (sel.mean() if sel.numel() else 0.0)
    return (x - sel.mean()) / sel.std(unbiased=True).clamp(min=eps)


def crop_start_around_label(label: np.ndarray, roi: Sequence[int] = (128, 128, 128)) -> tuple[int, ...]:
    """Start index per axis of the authors' window around the label's bounding box.

    Per axis: bbox ``[min, max + 1)``, centre ``(min + max_excl) / 2`` lowered to an integer (128 is even),
    window start ``centre - roi / 2`` (negative starts mean padding).

    Raises:
        ValueError: if the label is empty.
    """
    idx = np.nonzero(label)
    if not len(idx[0]):
        raise ValueError("the label is empty: the authors' crop is centred on the label's bounding box.")
    starts = []
    for axis, r in zip(idx, roi):
        lo, hi = int(axis.min()), int(axis.max()) + 1
        starts.append(int(np.floor((lo + hi) / 2.0)) - int(r) // 2)
    return tuple(starts)


def authors_crop(image_path: str | Path, label_path: str | Path, ct: bool, roi: Sequence[int] = (128, 128, 128),
                 label_value: int = 1) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """The authors' evaluation preprocessing of one case (nibabel; equals their torchio pipeline).

    RAS+ (closest canonical), CT clamped to [-1000, 1000] when ``ct``, binary label ``== label_value``, a
    ``roi`` window around the label's bounding-box centre padded with 0, then :func:`zscore_positive`.

    Returns:
        ``(1, 1, *roi)`` image, ``(1, 1, *roi)`` label and the window's start index (may be negative).
    """
    import nibabel as nib

    img_nii = nib.as_closest_canonical(nib.load(str(image_path)))
    lab_nii = nib.as_closest_canonical(nib.load(str(label_path)))
    img = np.asarray(img_nii.dataobj, dtype=np.float32)
    lab = np.asarray(lab_nii.dataobj) == label_value
    if img.shape != lab.shape:
        raise ValueError(f"{image_path}: image {img.shape} and label {lab.shape} differ in shape.")
    if ct:
        img = np.clip(img, -1000.0, 1000.0)
    start = crop_start_around_label(lab, roi)
    out_img = np.zeros(tuple(roi), np.float32)
    out_lab = np.zeros(tuple(roi), np.uint8)
    src = tuple(slice(max(s, 0), min(s + r, n)) for s, r, n in zip(start, roi, img.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    out_img[dst] = img[src]
    out_lab[dst] = lab[src]
    image = zscore_positive(torch.from_numpy(out_img))
    return image[None, None], torch.from_numpy(out_lab)[None, None], start
