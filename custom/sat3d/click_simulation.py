"""Simulated clicks from the error regions of a prediction (training and evaluation)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["sample_error_clicks", "next_click_volume"]


def sample_error_clicks(
    pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample, drawn uniformly from the larger error region (training).

    False negatives (target but not predicted) give a positive click, false positives a negative click;
    the larger of the two regions is chosen.  A sample without error gets a padding click (label -1).

    Args:
        pred: ``(B, 1, D, H, W)`` binary prediction.
        target: ``(B, 1, D, H, W)`` binary ground truth.
        generator: random generator (on CPU) for reproducibility.

    Returns:
        ``(B, 1, 3)`` voxel coordinates and ``(B, 1)`` labels (1, 0 or -1).
    """
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, 1, D, H, W).")
    p, t = pred.bool(), target.bool()
    fn, fp = t & ~p, p & ~t
    b = pred.shape[0]
    points = torch.zeros((b, 1, 3), dtype=torch.float32)
    labels = torch.full((b, 1), -1, dtype=torch.long)
    for i in range(b):
        n_fn, n_fp = int(fn[i].sum()), int(fp[i].sum())
        if n_fn == 0 and n_fp == 0:
            continue
        region, lab = (fn[i, 0], 1) if n_fn >= n_fp else (fp[i, 0], 0)
        idx = region.nonzero()
        k = int(torch.randint(len(idx), (1,), generator=generator))
        points[i, 0] = idx[k].float().cpu()
        labels[i, 0] = lab
    return points.to(pred.device), labels.to(pred.device)


def next_click_volume(pred: np.ndarray, target: np.ndarray) -> tuple[tuple[int, int, int], int] | None:
    """The next simulated click on a whole volume (evaluation; deterministic).

    The largest connected error component (false negatives and false positives separately) is chosen and
    the click is put at its voxel farthest from the component's border (Euclidean distance transform),
    as a user would click the centre of the biggest mistake.

    Args:
        pred: ``(D, H, W)`` binary prediction.
        target: ``(D, H, W)`` binary ground truth.

    Returns:
        ``((i, j, k), label)`` with label 1 (positive, missed tumour) or 0 (negative, false alarm), or
        ``None`` when the prediction is perfect.
    """
    pred, target = np.asarray(pred) > 0, np.asarray(target) > 0
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape.")
    best = None
    for region, label in ((target & ~pred, 1), (pred & ~target, 0)):
        if not region.any():
            continue
        comps, n = ndimage.label(region)
        sizes = ndimage.sum_labels(region, comps, index=np.arange(1, n + 1))
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (sizes[k - 1], comps == k, label)
    if best is None:
        return None
    _, comp, label = best
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1, 1:-1]
    ijk = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return (int(ijk[0]), int(ijk[1]), int(ijk[2])), label
