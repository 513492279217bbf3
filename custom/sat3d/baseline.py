"""A non-learned interactive baseline: connected intensity regions grown from the clicks.

Used by the evaluation to put the model's numbers in context (the model card reports both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["RegionGrowing"]


class RegionGrowing:
    """Grow, from each positive click, the connected region of voxels whose (smoothed) intensity is within
    ``tolerance`` of the click's; subtract the regions grown from negative clicks.  Growth is limited to a
    ball of ``max_radius_mm`` around the click so a region cannot flood the whole body.

    Works on the normalised image (foreground-std units), so one tolerance serves CT, MR and PET.

    Args:
        tolerance: accepted absolute intensity difference to the click's (smoothed) value.
        max_radius_mm: growth limit around each click.
        smoothing: Gaussian sigma (voxels) applied before comparing intensities.
    """

    def __init__(self, tolerance: float = 0.5, max_radius_mm: float = 60.0, smoothing: float = 1.0) -> None:
        if tolerance <= 0 or max_radius_mm <= 0:
            raise ValueError(f"tolerance and max_radius_mm must be > 0, got {tolerance}, {max_radius_mm}.")
        self.tolerance, self.max_radius_mm, self.smoothing = float(tolerance), float(max_radius_mm), float(smoothing)
        self._image: np.ndarray | None = None

    def set_image(self, image: np.ndarray, spacing: Sequence[float]) -> None:
        """``(D, H, W)`` normalised image and its voxel size in mm."""
        img = np.asarray(image, dtype=np.float32)
        self._image = ndimage.gaussian_filter(img, self.smoothing) if self.smoothing > 0 else img
        self.spacing = np.asarray(spacing, dtype=np.float32)

    def _grow(self, click: Sequence[int]) -> np.ndarray:
        img = self._image
        c = tuple(int(round(v)) for v in click)
        r = np.ceil(self.max_radius_mm / self.spacing).astype(int)
        box = tuple(slice(max(ci - ri, 0), min(ci + ri + 1, s)) for ci, ri, s in zip(c, r, img.shape))
        sub = img[box]
        local = tuple(ci - b.start for ci, b in zip(c, box))
        grid = np.meshgrid(*[(np.arange(b.start, b.stop) - ci) * sp for b, ci, sp in zip(box, c, self.spacing)], indexing="ij")
        ball = sum(g**2 for g in grid) <= self.max_radius_mm**2
        similar = (np.abs(sub - img[c]) <= self.tolerance) & ball
        comps, _ = ndimage.label(similar)
        out = np.zeros(img.shape, bool)
        if comps[local]:
            out[box] = comps == comps[local]
        return out

    def predict(self, clicks: Sequence[tuple[Sequence[int], int]]) -> np.ndarray:
        """Binary mask for clicks ``[((i, j, k), label), ...]`` (label 1 positive, 0 negative)."""
        if self._image is None:
            raise ValueError("no image: call set_image() first.")
        mask = np.zeros(self._image.shape, bool)
        for c, lab in clicks:
            if lab == 1:
                mask |= self._grow(c)
        for c, lab in clicks:
            if lab == 0:
                mask &= ~self._grow(c)
        return mask
