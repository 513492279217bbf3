"""Simulated clicks from the error regions of a prediction (training and evaluation)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["sample_error_clicks", "sample_first_clicks", "interior_voxel", "next_click_volume"]

#: where training draws a click in a region: any voxel, or the interior of its largest component
CLICK_SAMPLING = ("uniform", "interior")


def _largest_component(region: torch.Tensor) -> tuple[np.ndarray, int]:
    """The largest connected component of a boolean map (as a numpy mask) and its size (0 when empty)."""
    r = region.detach().cpu().numpy().astype(bool)
    if not r.any():
        return r, 0
    comps, n = ndimage.label(r)
    sizes = ndimage.sum_labels(r, comps, index=np.arange(1, n + 1))
    k = int(np.argmax(sizes))
    return comps == k + 1, int(sizes[k])


def interior_voxel(region: torch.Tensor, generator: torch.Generator | None = None, depth: float = 0.5) -> torch.Tensor:
    """A random voxel deep inside the largest connected component of ``region`` (a user's click).

    The candidates are the component's voxels whose distance to its border is at least ``depth`` times
    the largest such distance (``depth=1``: the centre that the evaluation's simulated user clicks).

    Args:
        region: ``(D, H, W)`` boolean map with at least one voxel.
        generator: random generator (on CPU).
        depth: fraction in [0, 1] of the maximal border distance a candidate must reach.

    Returns:
        ``(3,)`` float voxel coordinates.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}.")
    r, size = _largest_component(region)
    if not size:
        raise ValueError("interior_voxel needs a non-empty region.")
    dist = ndimage.distance_transform_edt(np.pad(r, 1))[1:-1, 1:-1, 1:-1]
    idx = np.argwhere(r & (dist >= depth * dist.max()))
    k = int(torch.randint(len(idx), (1,), generator=generator))
    return torch.as_tensor(idx[k], dtype=torch.float32)


def sample_first_clicks(
    target: torch.Tensor, prob: float, generator: torch.Generator | None = None, depth: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first click of a training sample: with probability ``prob``, a positive click deep inside the
    largest tumour component (where a user starts), else none (label -1, the automatic mode).

    Args:
        target: ``(B, 1, D, H, W)`` binary ground truth; a sample without tumour never gets a click.
        prob: probability in [0, 1] that a sample with tumour starts from a click.
        generator: random generator (on CPU).
        depth: see :func:`interior_voxel`.

    Returns:
        ``(B, 1, 3)`` voxel coordinates and ``(B, 1)`` labels (1 or -1).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"first click probability must be in [0, 1], got {prob}.")
    b = target.shape[0]
    points = torch.zeros((b, 1, 3), dtype=torch.float32)
    labels = torch.full((b, 1), -1, dtype=torch.long)
    for i in range(b):
        draw = float(torch.rand((), generator=generator))
        t = target[i, 0] > 0.5
        if draw < prob and bool(t.any()):
            points[i, 0] = interior_voxel(t, generator, depth)
            labels[i, 0] = 1
    return points.to(target.device), labels.to(target.device)


def sample_error_clicks(
    pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None, where: str = "uniform",
    depth: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample in the larger error region (training).

    False negatives (target but not predicted) give a positive click, false positives a negative click;
    the larger of the two regions is chosen.  A sample without error gets a padding click (label -1).

    Args:
        pred: ``(B, 1, D, H, W)`` binary prediction.
        target: ``(B, 1, D, H, W)`` binary ground truth.
        generator: random generator (on CPU) for reproducibility.
        where: ``"uniform"``: any voxel of the larger error region; ``"interior"``: deep inside the largest
            connected error component of either sign (:func:`interior_voxel`), as a user corrects the biggest
            mistake.
        depth: see :func:`interior_voxel` (``where="interior"`` only).

    Returns:
        ``(B, 1, 3)`` voxel coordinates and ``(B, 1)`` labels (1, 0 or -1).
    """
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, 1, D, H, W).")
    if where not in CLICK_SAMPLING:
        raise ValueError(f"click sampling must be one of {CLICK_SAMPLING}, got {where!r}.")
    p, t = pred.bool(), target.bool()
    fn, fp = t & ~p, p & ~t
    b = pred.shape[0]
    points = torch.zeros((b, 1, 3), dtype=torch.float32)
    labels = torch.full((b, 1), -1, dtype=torch.long)
    for i in range(b):
        n_fn, n_fp = int(fn[i].sum()), int(fp[i].sum())
        if n_fn == 0 and n_fp == 0:
            continue
        if where == "interior":  # the sign of the largest error component, as the evaluation's user
            n_fn, n_fp = _largest_component(fn[i, 0])[1], _largest_component(fp[i, 0])[1]
        region, lab = (fn[i, 0], 1) if n_fn >= n_fp else (fp[i, 0], 0)
        if where == "interior":
            points[i, 0] = interior_voxel(region, generator, depth)
        else:
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
