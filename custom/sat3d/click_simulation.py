"""Simulated clicks from the error regions of a prediction (training and evaluation)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["sample_error_clicks", "sample_first_clicks", "interior_voxel", "interior_voxels", "largest_components",
           "border_distance", "next_click_volume"]

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


def _face_max(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each voxel and its 6 face neighbours of ``(N, 1, D, H, W)``."""
    out = x
    for kernel, pad in (((3, 1, 1), (1, 0, 0)), ((1, 3, 1), (0, 1, 0)), ((1, 1, 3), (0, 0, 1))):
        out = torch.maximum(out, F.max_pool3d(x, kernel, stride=1, padding=pad))
    return out


def largest_components(regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest face-connected component of each boolean map, on the maps' device (batched).

    Components are 6-connected, as scipy's default labelling that the CPU path and the evaluation's
    simulated user use.  Every voxel starts labelled with its own (1-based) index.  Each sweep takes the
    largest label among a voxel and its 6 face neighbours inside the map; the voxel that each label names
    takes the largest label seen beside any voxel carrying it (hooking); then every label jumps twice to the
    label of the voxel it names (that voxel is in the same component and its label is never smaller).  So
    labels travel along a winding component in a few sweeps rather than one per voxel of its length (6
    instead of 112 on 128^3 error-like maps, ``benchmarks/bench_clicks.py``).  Each component ends labelled
    by its largest voxel index.

    Args:
        regions: ``(N, D, H, W)`` boolean maps.

    Returns:
        ``(N, D, H, W)`` boolean masks of the largest components (empty for an empty map) and ``(N,)`` their
        sizes in voxels.
    """
    if regions.ndim != 4:
        raise ValueError(f"regions must be (N, D, H, W), got {tuple(regions.shape)}.")
    n, numel = regions.shape[0], regions[0].numel()
    dtype = torch.float32 if numel < 2**24 else torch.float64  # indices stay exact
    inside = regions.unsqueeze(1).to(dtype)
    ids = torch.arange(1, numel + 1, device=regions.device, dtype=dtype).view(1, 1, *regions.shape[1:]) * inside
    for _ in range(numel):
        grown = (_face_max(ids) * inside).view(n, numel)
        # hook: the voxel each label names takes the largest label seen next to any voxel carrying that label
        table = F.pad(ids.view(n, numel), (1, 0)).scatter_reduce(1, ids.view(n, numel).long(), grown, "amax")
        for _jump in range(2):  # compress: follow the labels' chains
            grown = torch.gather(table, 1, grown.long())
            table = F.pad(grown, (1, 0))
        grown = grown.view_as(ids)
        if torch.equal(grown, ids):
            break
        ids = grown
    flat = ids.view(n, -1).long()
    offsets = (torch.arange(n, device=regions.device) * (numel + 1)).view(n, 1)
    counts = torch.bincount((flat + offsets).view(-1), minlength=n * (numel + 1)).view(n, numel + 1)
    counts[:, 0] = 0
    sizes, best = counts.max(1)
    masks = (flat == best.view(n, 1)) & (sizes.view(n, 1) > 0)
    return masks.view(regions.shape), sizes


def border_distance(masks: torch.Tensor) -> torch.Tensor:
    """Distance of each voxel of ``(N, D, H, W)`` boolean maps to their border, in voxels (0 outside).

    The number of erosions a voxel survives plus one, alternating the 6-neighbourhood (a cross) and the
    26-neighbourhood (a cube): an octagonal approximation of the Euclidean distance transform, in plain
    tensor operations on the maps' device.  The volume's edge counts as border.
    """
    cur = masks.unsqueeze(1).float()
    dist = torch.zeros_like(cur)
    level = 0
    while bool(cur.any()):
        dist += cur
        if level % 2 == 0:  # cross: a voxel stays if its 6 face neighbours are inside (beyond the edge: outside)
            cur = 1.0 - _face_max(F.pad(1.0 - cur, [1] * 6, value=1.0))[:, :, 1:-1, 1:-1, 1:-1]
        else:  # cube: all 26 neighbours
            cur = -F.max_pool3d(-F.pad(cur, [1] * 6), 3, stride=1)
        level += 1
    return dist.squeeze(1)


def interior_voxels(regions: torch.Tensor, generator: torch.Generator | None = None, depth: float = 0.5,
                    largest: bool = True) -> torch.Tensor:
    """:func:`interior_voxel` for a batch of maps on their device (the GPU's training clicks).

    The distance to the border is :func:`border_distance` (octagonal; :func:`interior_voxel` computes the
    Euclidean one with scipy on the CPU), so the same seed picks other voxels than on the CPU; so does the
    order of the draws in :func:`sample_first_clicks`.  Components are face-connected, as on the CPU.

    Args:
        regions: ``(N, D, H, W)`` boolean maps, each with at least one voxel.
        generator: random generator (on CPU); one draw per map, in order.
        depth: fraction in [0, 1] of the maximal border distance a candidate must reach.
        largest: restrict each map to its largest component first (``False``: the maps are components).

    Returns:
        ``(N, 3)`` float voxel coordinates (on the maps' device).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}.")
    if regions.ndim != 4 or not bool(regions.flatten(1).any(1).all()):
        raise ValueError("interior_voxels needs (N, D, H, W) maps, each with at least one voxel.")
    masks = largest_components(regions)[0] if largest else regions.bool()
    n = regions.shape[0]
    dist = border_distance(masks).view(n, -1)
    cands = dist >= (depth * dist.max(1, keepdim=True).values).clamp(min=1.0)
    counts = cands.sum(1).tolist()
    ks = torch.tensor([int(torch.randint(c, (1,), generator=generator)) + 1 for c in counts], device=regions.device)
    flat = torch.argmax(((cands.to(torch.int32).cumsum(1, dtype=torch.int32) == ks.view(n, 1)) & cands).to(torch.uint8), 1)
    d, h, w = regions.shape[1:]
    return torch.stack([flat // (h * w), (flat // w) % h, flat % w], 1).float()


def sample_first_clicks(
    target: torch.Tensor, prob: float, generator: torch.Generator | None = None, depth: float = 0.5,
    batched: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first click of a training sample: with probability ``prob``, a positive click deep inside the
    largest tumour component (where a user starts), else none (label -1, the automatic mode).

    Args:
        target: ``(B, 1, D, H, W)`` binary ground truth; a sample without tumour never gets a click.
        prob: probability in [0, 1] that a sample with tumour starts from a click.
        generator: random generator (on CPU).
        depth: see :func:`interior_voxel`.
        batched: pick the voxels with :func:`interior_voxels` on the target's device (default: on a GPU;
            the CPU uses scipy's exact distance, one sample at a time).

    Returns:
        ``(B, 1, 3)`` voxel coordinates and ``(B, 1)`` labels (1 or -1).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"first click probability must be in [0, 1], got {prob}.")
    b = target.shape[0]
    points = torch.zeros((b, 1, 3), dtype=torch.float32)
    labels = torch.full((b, 1), -1, dtype=torch.long)
    if target.device.type != "cpu" if batched is None else batched:
        t = target[:, 0] > 0.5
        has = t.flatten(1).any(1).tolist()
        rows = [i for i in range(b) if float(torch.rand((), generator=generator)) < prob and has[i]]
        if rows:
            points[rows, 0] = interior_voxels(t[rows], generator, depth).cpu()
            labels[rows, 0] = 1
        return points.to(target.device), labels.to(target.device)
    for i in range(b):
        draw = float(torch.rand((), generator=generator))
        t = target[i, 0] > 0.5
        if draw < prob and bool(t.any()):
            points[i, 0] = interior_voxel(t, generator, depth)
            labels[i, 0] = 1
    return points.to(target.device), labels.to(target.device)


def sample_error_clicks(
    pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None, where: str = "uniform",
    depth: float = 0.5, batched: bool | None = None,
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
        batched: ``where="interior"`` with :func:`largest_components` and :func:`interior_voxels` on the
            tensors' device (default: on a GPU; the CPU uses scipy, one sample at a time).

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
    if where == "interior" and (pred.device.type != "cpu" if batched is None else batched):
        comps, sizes = largest_components(torch.cat([fn[:, 0], fp[:, 0]]))
        n_fn, n_fp = sizes[:b].tolist(), sizes[b:].tolist()
        rows = [i for i in range(b) if n_fn[i] or n_fp[i]]
        if rows:
            positive = torch.tensor([n_fn[i] >= n_fp[i] for i in rows], device=pred.device)
            chosen = torch.where(positive.view(-1, 1, 1, 1), comps[rows], comps[[b + i for i in rows]])
            points[rows, 0] = interior_voxels(chosen, generator, depth, largest=False).cpu()
            labels[rows, 0] = positive.long().cpu()
        return points.to(pred.device), labels.to(pred.device)
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
