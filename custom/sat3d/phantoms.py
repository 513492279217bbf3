"""Procedural body phantoms with labelled lesions inside organs (training data, domain randomisation).

Each phantom is a random torso section: a body outline with a fat layer and a muscle wall, a cavity with
randomly placed organs (ellipsoids), vessels, a bone column and bowel-like texture, and one labelled lesion
(or several: ``lesion_count``) placed *inside* an organ, brighter or darker than it.  Intensities follow a CT
table (Hounsfield units, jittered) or, for a fraction of phantoms, a random MR-like table; blur and
correlated noise vary.  The organs are never labelled, so a model trained on these learns that a
homogeneous organ holding a lesion is not the lesion.

Why: SAT3D trained on real scans only took the whole organ around a lesion on cartoon-like images (flat
organs, sharp edges).  The generator is separate from the demo phantom's (``bundle/scripts/make_demo_data.py``)
and never reproduces its layout; what the demo then measures is said in the model card.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = ["random_phantom"]

_CT = {"air": -1000.0, "fat": -100.0, "muscle": 50.0, "visceral_fat": -90.0, "bowel": 30.0,
       "cortical": 700.0, "cancellous": 250.0}


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix: angles about x, y and z drawn in ``[-max_deg, max_deg]``."""
    return Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True).as_matrix()


def _draw_organs(rng: np.random.Generator, img: np.ndarray, cavity: np.ndarray, cav_axes: np.ndarray, ellipsoid,
                 organ_value, mr: bool, spacing: np.ndarray, disjoint: bool, min_axis: float
                 ) -> list[tuple[np.ndarray, float]]:
    """Paint 2-6 random ellipsoid organs into ``img`` (in place, inside ``cavity``); returns their masks and values."""
    shape = img.shape
    organs: list[tuple[np.ndarray, float]] = []
    lo = [min(min_axis, 0.7 * a) for a in cav_axes]  # a narrow cavity caps it (the generator used to raise)
    for _ in range(int(rng.integers(2, 7))):
        axes = np.array([rng.uniform(lo[0], 0.7 * cav_axes[0]), rng.uniform(lo[1], 0.7 * cav_axes[1]),
                         rng.uniform(max(15.0, min_axis), 90)])
        c = np.array([rng.uniform(-0.6, 0.6) * cav_axes[0], rng.uniform(-0.6, 0.6) * cav_axes[1], rng.uniform(-20, 20)])
        m = ellipsoid(c, axes, _rotation(rng, 30)) & cavity
        if m.sum() < 50 or (disjoint and any((m & o).any() for o, _ in organs)):
            continue
        v = organ_value()
        if rng.random() < 0.3:  # some texture inside the organ
            tex = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(1, 3) / spacing)
            img[m] = v + (0.05 if mr else 1.0) * rng.uniform(3, 12) * (tex / (tex.std() + 1e-6))[m] * (v / 100 if mr else 1.0)
        else:
            img[m] = v
        organs.append((m, v))
    return organs


def random_phantom(rng: np.random.Generator, shape: Sequence[int] = (160, 160, 80),
                   spacing: Sequence[float] = (1.0, 1.0, 2.0), mr_prob: float = 0.3,
                   lesion_count: Sequence[int] = (1, 1), lesion_radius_mm: Sequence[float] = (2.5, 30.0),
                   disjoint_organs: bool = False, organ_min_axis_mm: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random phantom.

    Args:
        rng: random generator (the phantom is a function of its state).
        shape: volume size in voxels.
        spacing: voxel size in mm.
        mr_prob: probability of a random MR-like intensity table instead of CT's.
        lesion_count: ``(min, max)`` labelled lesions, each in a randomly chosen organ.
        lesion_radius_mm: ``(min, max)`` of a lesion's radius (log-uniform; capped by the host organ's depth, and
            an organ thinner than the minimum gets no lesion, so a phantom may hold fewer than ``lesion_count``).
        disjoint_organs: drop an organ that would overlap an earlier one, so every organ is whole.  By default
            organs may overlap (38 of 40 phantoms of 160x160x80 voxels), which draws organ edges inside organs.
        organ_min_axis_mm: the smallest semi-axis an organ is drawn with (capped at 70 % of the cavity's); the
            host organ's depth caps a lesion's radius, so small organs hold only small lesions.

    Returns:
        image ``(D, H, W)`` float32, label ``(D, H, W)`` uint8 (1 = the lesion; 0 where the lesion could not
        be placed), affine (RAS mm, origin at the volume centre).

    Raises:
        ValueError: for a lesion count or radius range that is not ``0 <= min <= max`` (radius above 0), before
            anything is drawn.
    """
    lo, hi = int(lesion_count[0]), int(lesion_count[1])
    if not 0 <= lo <= hi or not 0 < lesion_radius_mm[0] <= lesion_radius_mm[1]:
        raise ValueError(f"lesion_count {list(lesion_count)} and lesion_radius_mm {list(lesion_radius_mm)} must be "
                         "(min, max) pairs with 0 <= min <= max (radius > 0).")
    r_lo, r_hi = float(lesion_radius_mm[0]), float(lesion_radius_mm[1])
    shape, spacing = tuple(int(s) for s in shape), np.asarray(spacing, np.float64)
    centre = np.array([n * s / 2 for n, s in zip(shape, spacing)])
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1) - centre
    x, y, z = np.moveaxis(grid, -1, 0)
    half = centre[:2]
    mr = rng.random() < mr_prob
    if mr:  # an MR-like table: each tissue class its own random signal, air dark
        tissue = {k: float(rng.uniform(50, 1000)) for k in _CT}
        tissue["air"] = float(rng.uniform(0, 20))
        organ_value = lambda: float(rng.uniform(80, 1000))  # noqa: E731
        contrast_scale, noise_sd = float(rng.uniform(0.1, 0.5)), float(rng.uniform(5, 40))
    else:
        tissue = {k: v + (rng.uniform(-20, 20) if k != "air" else 0.0) for k, v in _CT.items()}
        organ_value = lambda: float(rng.uniform(20, 200))  # noqa: E731
        contrast_scale, noise_sd = None, float(rng.uniform(3, 20))

    def column(cx, cy, ax, ay):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1

    def ellipsoid(c, axes, rot):
        local = (grid - c) @ rot
        return (((local / axes) ** 2).sum(-1)) <= 1

    img = np.full(shape, tissue["air"], np.float32)
    ax_body = half * rng.uniform(0.7, 0.95, 2)
    fat_mm, wall_mm = rng.uniform(3, 18), rng.uniform(3, 12)
    body = column(0, 0, *ax_body)
    wall = column(0, 0, *(ax_body - fat_mm))
    cavity = column(0, rng.uniform(-4, 4), *(ax_body - fat_mm - wall_mm))
    img[body], img[wall], img[cavity] = tissue["fat"], tissue["muscle"], tissue["visceral_fat"]
    if rng.random() < 0.8:
        bowel = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(3, 8) / spacing) > rng.uniform(-0.05, 0.15)
        img[cavity & bowel] = tissue["bowel"]
    cav_axes = ax_body - fat_mm - wall_mm
    organs = _draw_organs(rng, img, cavity, cav_axes, ellipsoid, organ_value, mr, spacing, disjoint_organs,
                          float(organ_min_axis_mm))
    for _ in range(int(rng.integers(0, 4))):  # vessels along z
        cx, cy = rng.uniform(-0.5, 0.5) * cav_axes[0], rng.uniform(-0.5, 0.5) * cav_axes[1]
        r = rng.uniform(4, 12)
        img[column(cx, cy, r, r * rng.uniform(0.8, 1.2))] = organ_value() * (1.0 if mr else 1.4)
    if rng.random() < 0.8:  # a vertebra-like bone column behind the cavity
        by, r = ax_body[1] - fat_mm - wall_mm * 0.5 - rng.uniform(5, 15), rng.uniform(8, 16)
        img[column(0, by, r, r * 0.85)] = tissue["cortical"]
        img[column(0, by, r * 0.75, r * 0.65)] = tissue["cancellous"]
    label = np.zeros(shape, np.uint8)
    for _ in range(lo if lo == hi else int(rng.integers(lo, hi + 1))):
        if not organs:
            break
        m, v = organs[int(rng.integers(len(organs)))]
        depth = ndimage.distance_transform_edt(m, sampling=spacing)
        if depth.max() >= max(3.0, r_lo):  # an organ too thin for the smallest lesion gets none
            r_mm = float(np.exp(rng.uniform(np.log(r_lo), np.log(min(r_hi, max(depth.max() * 0.9, r_lo * 1.04))))))
            cand = np.argwhere(depth >= min(r_mm, depth.max() * 0.9))
            c = cand[int(rng.integers(len(cand)))] + rng.uniform(-0.5, 0.5, 3)
            axes = r_mm * rng.uniform(0.65, 1.0, 3)
            local = (grid - c * spacing + centre) @ _rotation(rng, 90)
            rr = np.sqrt(((local / axes) ** 2).sum(-1))
            if rng.random() < 0.6:  # lobulated surface
                field = ndimage.gaussian_filter(rng.standard_normal(shape), max(r_mm / 2.5, 1.0) / spacing)
                rr = rr * (1.0 + 0.18 * field / (field.std() + 1e-6))
            inside = rr <= 1
            inside &= body
            if inside.any():
                amount = (contrast_scale * v * rng.uniform(0.5, 1.5)) if mr else rng.uniform(20, 120)
                sign = 1.0 if rng.random() < 0.4 else -1.0
                img[inside] = v + sign * amount
                label[inside] = 1
    img = ndimage.gaussian_filter(img, rng.uniform(0.4, 1.2))
    img += rng.uniform(1.0, 2.0) * ndimage.gaussian_filter(rng.normal(0.0, noise_sd * 4, shape), rng.uniform(0.5, 1.0))
    if mr:
        img = np.abs(img)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -centre
    return img.astype(np.float32), label, affine
