"""Active learning: rank unlabelled studies by the critic's uncertainty."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["uncertainty_score", "rank_by_uncertainty"]


def uncertainty_score(confidence: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean uncertainty ``1 - confidence`` inside the predicted mask (or over the volume without one).

    Args:
        confidence: ``(..., D, H, W)`` critic confidence in [0, 1].
        mask: optional binary mask of the same size; when it is given and not empty, the mean is taken
            over the mask, where the critic's judgement matters; otherwise over the whole volume.
    """
    u = 1.0 - confidence.float().clamp(0, 1)
    if mask is not None and bool(mask.bool().any()):
        return float(u[mask.bool()].mean())
    return float(u.mean())


def rank_by_uncertainty(
    studies: Iterable[Any], predict: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]
) -> list[tuple[Any, float]]:
    """Order studies from most to least uncertain (label these first).

    Args:
        studies: study identifiers.
        predict: returns ``(mask, confidence)`` for a study, e.g. from :class:`sat3d.inferer.SAT3DInferer`.

    Returns:
        ``[(study, score), ...]`` sorted by decreasing mean uncertainty; ties keep the input order.
    """
    scored = [(s, uncertainty_score(conf, mask)) for s, (mask, conf) in ((s, predict(s)) for s in studies)]
    return sorted(scored, key=lambda t: -t[1])
