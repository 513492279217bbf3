"""Shared fixtures: small synthetic NIfTI volumes and the repository paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SHARED = REPO.parent / "shared"
#: the newest experimental (CPU-trained, not shipped as model.pt) weights, kept for fine-tuning and tests
EXPERIMENTAL_WEIGHTS = BUNDLE / "models" / "experimental" / "sat3d_cpu_run19.pt"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (nonzero voxels); 0 when both are empty."""
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def demo_data_module():
    """``bundle/scripts/make_demo_data.py`` imported as a module (for ``make_phantom``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo_data", BUNDLE / "scripts" / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def grow_from_base_weights(tmp_path: Path, base_preset: str, preset: str, roi: int = 32):
    """Save the weights of a ``base_preset`` network and load them into a ``preset`` network built on it
    (``sat3d.build.PRESET_BASES``), checking first that loading them without ``grow`` is refused (inference never
    silently runs a half-trained network).

    Returns:
        the base network, the grown network, its added parameters as they were before loading (name -> tensor),
        and the settings it was loaded with.
    """
    from sat3d import build_sat3d
    from sat3d.build import PRESET_BASES
    from sat3d.weights import load_weights, save_weights

    torch.manual_seed(0)
    size = {"roi_size": (roi,) * 3}
    base = build_sat3d(base_preset, overrides=size)
    path = save_weights(base, tmp_path / f"{base_preset}.pt", {"preset": base_preset, "roi_size": [roi] * 3})
    grown = build_sat3d(preset, overrides=size)
    expect = {"preset": preset, "roi_size": [roi] * 3}
    with pytest.raises(ValueError, match=rf'preset "{preset}" \(weights: "{base_preset}"\)'):
        load_weights(grown, path, expect=expect)
    added = {k: v.clone() for k, v in grown.state_dict().items() if k.startswith(PRESET_BASES[preset][1])}
    load_weights(grown, path, expect=expect, grow=True)
    return base, grown, added, expect


def make_sphere_volume(shape=(40, 36, 44), centre=None, radius=7.0, seed=0, spacing=(1.5, 1.2, 2.0)):
    """A noisy image with a bright sphere and its label; returns (image, label, affine)."""
    rng = np.random.default_rng(seed)
    centre = centre if centre is not None else [s / 2 for s in shape]
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    dist = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    label = (dist <= radius).astype(np.uint8)
    image = (rng.normal(100.0, 10.0, shape) + 80.0 * label).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    return image, label, affine


@pytest.fixture
def sphere_volume():
    return make_sphere_volume()
