"""Geodesic distance maps of clicks: where a click's region plausibly extends along the image.

A click says "this object", not "this size".  A Euclidean click map (a sphere or a Gaussian around the
click) carries no hint of where the object ends, so a network that has to learn the edge from scratch first
learns the typical object size.  The geodesic distance from the click over the image (DeepIGeoS, Wang et al.
2018, TPAMI) is small everywhere the image is homogeneous with the clicked voxel and jumps across
intensity edges, so its map already follows the lesion's border; the network only has to learn how far to
trust it.

The distance is computed on a coarse grid (the crop average-pooled by ``pool``) by a fixed number of
Jacobi relaxations over the 26-neighbourhood: each step from a voxel to a neighbour costs
``sqrt(length**2 + (gamma * intensity_difference)**2)`` in coarse voxels.  Voxels that the relaxation does
not reach keep ``max_distance``.  Everything is plain tensor arithmetic, so it runs on the crop's device.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

__all__ = ["geodesic_distance", "geodesic_click_maps"]

_MAX = 64.0
_OFFSETS = [o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]


def _shift(x: torch.Tensor, o: tuple[int, int, int], fill: float) -> torch.Tensor:
    """``y[..., i, j, k] = x[..., i - o0, j - o1, k - o2]`` (``fill`` where that is outside)."""
    pad = []
    for s in reversed(o):  # F.pad wants the last dimension first: (left, right) pairs
        pad += [max(s, 0), max(-s, 0)]
    y = F.pad(x, pad, value=fill)
    d, h, w = x.shape[-3:]
    i0, j0, k0 = (max(-s, 0) for s in o)
    return y[..., i0:i0 + d, j0:j0 + h, k0:k0 + w]


def geodesic_distance(image: torch.Tensor, seeds: torch.Tensor, gamma: float = 20.0, iterations: int = 24,
                      max_distance: float = _MAX) -> torch.Tensor:
    """Geodesic distance (in grid voxels) from the ``seeds`` over ``image``.

    Args:
        image: ``(B, D, H, W)`` intensities (normalised units).
        seeds: ``(B, D, H, W)`` boolean, the voxels at distance 0 (a map may be empty: then every voxel is
            at ``max_distance``).
        gamma: cost of one unit of intensity difference, in voxel lengths.
        iterations: relaxation sweeps; a voxel more than ``iterations`` steps from every seed stays at
            ``max_distance``.
        max_distance: distance given to unreached voxels (and the cap of every distance).

    Returns:
        ``(B, D, H, W)`` distances in ``[0, max_distance]``.
    """
    if image.ndim != 4 or seeds.shape != image.shape:
        raise ValueError(f"image and seeds must both be (B, D, H, W), got {tuple(image.shape)} and {tuple(seeds.shape)}.")
    if gamma < 0 or iterations < 0 or max_distance <= 0:
        raise ValueError(f"need gamma >= 0, iterations >= 0 and max_distance > 0, got {gamma}, {iterations}, {max_distance}.")
    image = image.float()
    dist = torch.where(seeds.bool(), 0.0, float(max_distance)).to(image)
    costs = []
    for o in _OFFSETS:
        length2 = float(sum(s * s for s in o))
        diff = image - _shift(image, o, 0.0)  # a voxel's value against its neighbour's at -o
        costs.append(torch.sqrt(length2 + (gamma * diff) ** 2))
    for _ in range(iterations):
        new = dist
        for o, cost in zip(_OFFSETS, costs):
            new = torch.minimum(new, _shift(dist, o, float(max_distance)) + cost)
        new = new.clamp_max(max_distance)
        if torch.equal(new, dist):
            break
        dist = new
    return dist


@torch.no_grad()
def geodesic_click_maps(image: torch.Tensor, points: torch.Tensor | None, labels: torch.Tensor | None,
                        pool: int = 2, gamma: float = 20.0, scale: float = 4.0, iterations: int = 24) -> torch.Tensor:
    """Positive and negative geodesic click maps of a crop at the crop's size.

    A map is ``exp(-barrier / scale)``, where the barrier is what the intensity edges add to the shortest
    path from the nearest click (the geodesic distance minus the plain chamfer distance): about 1 across the
    clicked region however large it is, falling across its edge; 0 where the relaxation did not reach.

    Args:
        image: ``(B, 1, D, H, W)`` the crop (normalised), sizes divisible by ``pool``.
        points: ``(B, N, 3)`` clicks in crop voxels, or ``None``; clicks outside the crop are left out.
        labels: ``(B, N)`` 1 positive, 0 negative, -1 padding (ignored).
        pool: the distance is computed on the crop average-pooled by this factor (smoother, cheaper).
        gamma: cost of one unit of intensity difference (see :func:`geodesic_distance`).
        scale: barrier (in voxel lengths) at which the map falls to 1/e.
        iterations: relaxation sweeps.

    Returns:
        ``(B, 2, D, H, W)``: channel 0 from the positive clicks, channel 1 from the negative ones (zeros where
        a kind of click is absent).
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, D, H, W) crop, got {tuple(image.shape)}.")
    if pool < 1 or any(s % pool for s in image.shape[2:]):
        raise ValueError(f"crop size {tuple(image.shape[2:])} must be divisible by pool={pool}.")
    b = image.shape[0]
    coarse = F.avg_pool3d(image.float(), pool)[:, 0] if pool > 1 else image.float()[:, 0]
    grid = coarse.shape[1:]
    maps = torch.zeros((b, 2, *grid), dtype=torch.float32, device=image.device)
    if points is None or labels is None or points.shape[1] == 0:
        return F.interpolate(maps, size=image.shape[2:], mode="trilinear", align_corners=False)
    idx = torch.div(points.float(), pool).floor().long()
    # a click outside the crop (of another window) says nothing about this crop's voxels: left out
    in_crop = ((idx >= 0) & (idx < torch.tensor(grid, device=idx.device))).all(-1)
    for c, want in ((0, 1), (1, 0)):
        bi, ni = (in_crop & (labels.to(idx.device) == want)).nonzero(as_tuple=True)
        if len(bi) == 0:
            continue
        v = idx[bi, ni]
        seeds = torch.zeros((b, *grid), dtype=torch.bool, device=image.device)
        seeds[bi, v[:, 0], v[:, 1], v[:, 2]] = True
        geo = geodesic_distance(coarse, seeds, gamma=gamma, iterations=iterations)
        euc = geodesic_distance(coarse, seeds, gamma=0.0, iterations=iterations)
        barrier = (geo - euc).clamp_min(0.0)  # what the intensity edges on the way add to the path
        keep = seeds.flatten(1).any(1).view(b, 1, 1, 1) & (geo < _MAX)
        maps[:, c] = torch.where(keep, torch.exp(-barrier / scale), torch.zeros_like(geo))
    return F.interpolate(maps, size=image.shape[2:], mode="trilinear", align_corners=False)
