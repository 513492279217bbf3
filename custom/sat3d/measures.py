"""Statistics of a result mask: volume, connected components, centre, mean confidence."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["mask_statistics"]


def mask_statistics(mask: np.ndarray, affine: np.ndarray, confidence: np.ndarray | None = None) -> dict[str, float]:
    """Volume in ml, 26-connected component count, centre (world mm) and mean confidence of a binary 3D mask.

    Empty masks give ``None`` for the centre and the mean confidence (JSON ``null``).

    Args:
        mask: ``(X, Y, Z)`` binary mask.
        affine: ``(4, 4)`` voxel-to-world affine in mm.
        confidence: optional ``(X, Y, Z)`` confidence map.
    """
    mask = np.asarray(mask) > 0
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    _, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    stats: dict[str, Any] = {"voxels": int(mask.sum()), "volume_ml": float(mask.sum()) * voxel_ml, "components": int(n)}
    stats["centre_mm"] = (
        [round(float(v), 1) for v in (np.asarray(affine, dtype=np.float64) @ [*np.argwhere(mask).mean(0), 1.0])[:3]]
        if mask.any() else None
    )
    if confidence is not None:
        stats["mean_confidence"] = float(np.asarray(confidence)[mask].mean()) if mask.any() else None
    return stats
