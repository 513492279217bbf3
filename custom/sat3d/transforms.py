"""Dictionary transforms SAT3D adds to MONAI's: input validation and splitting the network output."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["ValidateVolumed", "SplitPredictiond"]


class ValidateVolumed(MapTransform):
    """Reject inputs that are not single 3D volumes or that hold NaN/inf (after channel-first loading).

    Raises ``ValueError`` naming the file (from the tensor's ``filename_or_obj`` metadata) and the problem.
    """

    def __init__(self, keys: KeysCollection, min_size: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = int(min_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = img.meta.get("filename_or_obj", key) if isinstance(img, MetaTensor) else key
            if img.ndim != 4:
                raise ValueError(f"{name}: expected one 3D volume (channel, x, y, z); got array of shape {tuple(img.shape)}.")
            if img.shape[0] != 1:
                raise ValueError(f"{name}: expected a single-channel volume, got {img.shape[0]} channels (4D/time series?).")
            if any(s < self.min_size for s in img.shape[1:]):
                raise ValueError(f"{name}: image of size {list(img.shape[1:])} is 2D or degenerate; a 3D volume is required.")
            if not torch.isfinite(torch.as_tensor(img)).all():
                n = int((~torch.isfinite(torch.as_tensor(img))).sum())
                raise ValueError(f"{name}: image contains {n} NaN or infinite voxels.")
        return d



class SplitPredictiond(MapTransform):
    """Split the inferer's ``(2, ...)`` output into a binary mask and a confidence map.

    Channel 0 (logits) becomes ``sigmoid > threshold`` as uint8 under the same key; channel 1 (critic
    confidence in [0, 1]) goes to ``confidence_key``.  Metadata are kept on both.

    Args:
        keys: key of the inferer output.
        threshold: probability threshold of the mask.
        confidence_key: where to put the confidence map.
    """

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, confidence_key: str = "confidence") -> None:
        super().__init__(keys)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.threshold = float(threshold)
        self.confidence_key = confidence_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.ndim != 4 or pred.shape[0] != 2:
                raise ValueError(f"expected a (2, X, Y, Z) logits+confidence output under {key!r}, got {tuple(pred.shape)}.")
            mask = (torch.sigmoid(pred[:1].float()) > self.threshold).to(torch.uint8)
            conf = pred[1:2].float().clamp(0.0, 1.0)
            d[key] = mask
            d[self.confidence_key] = conf
            if isinstance(pred, MetaTensor) and not isinstance(conf, MetaTensor):
                d[key] = MetaTensor(mask, meta=dict(pred.meta))
                d[self.confidence_key] = MetaTensor(conf, meta=dict(pred.meta))
        return d
