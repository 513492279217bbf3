"""Ranking studies by the critic's uncertainty."""

from __future__ import annotations

import torch
from sat3d.active_learning import rank_by_uncertainty, uncertainty_score


def test_uncertainty_score_uses_mask_region():
    conf = torch.ones(8, 8, 8)
    conf[:4] = 0.2
    mask = torch.zeros(8, 8, 8, dtype=torch.uint8)
    mask[:2] = 1
    assert abs(uncertainty_score(conf, mask) - 0.8) < 1e-6
    assert abs(uncertainty_score(conf) - 0.4) < 1e-6
    assert abs(uncertainty_score(conf, torch.zeros_like(mask)) - 0.4) < 1e-6


def test_rank_by_uncertainty_orders_most_uncertain_first():
    confs = {"a": 0.9, "b": 0.1, "c": 0.5}
    ranked = rank_by_uncertainty(["a", "b", "c"], lambda s: (None, torch.full((4, 4, 4), confs[s])))
    assert [s for s, _ in ranked] == ["b", "c", "a"]
    assert abs(ranked[0][1] - 0.9) < 1e-6
