"""Synthetic lesions inserted into real anatomy (training augmentation).

A lesion is drawn in a normalised image crop (see :class:`sat3d.transforms.ForegroundNormalized`): a random
3D shape (ellipsoid with lobulated or irregular surface, optionally a cystic/necrotic core or an
enhancing rim), blurred to the host's partial-volume edge, with a contrast brighter or darker than the
host tissue and the host's own noise level.  Intensities are in foreground-std units, so the same rule
serves CT, MR and PET crops.  The lesion is added to the label, so the model learns "segment the lesion".
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

__all__ = ["draw_lesion", "RandSyntheticLesiond"]


def _smooth_field(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / (f.std() + 1e-6)


def draw_lesion(
    shape: Sequence[int],
    centre: Sequence[float],
    radius_vox: float,
    rng: np.random.Generator,
    style: str = "solid",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random lesion shape around ``centre`` (voxels).

    Args:
        shape: crop size.
        centre: lesion centre in voxels.
        radius_vox: mean radius in voxels.
        rng: random generator.
        style: ``solid`` / ``lobulated`` / ``irregular`` surface.

    Returns:
        ``inside`` (bool), ``depth`` (float, 0 at the surface and 1 at the centre; <0 outside) and the
        soft (partial-volume) occupancy in [0, 1].
    """
    axes = radius_vox * rng.uniform(0.65, 1.0, 3)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1) - np.asarray(centre, np.float32)
    local = grid @ q.astype(np.float32)
    r = np.sqrt(((local / axes) ** 2).sum(-1))  # 1 on the ellipsoid surface
    if style != "solid":
        amp, sigma = (0.18, max(radius_vox / 2.5, 1.0)) if style == "lobulated" else (0.28, max(radius_vox / 6.0, 0.7))
        r = r * (1.0 + amp * _smooth_field(shape, sigma, rng))
    depth = 1.0 - r
    inside = depth > 0
    soft = ndimage.gaussian_filter(inside.astype(np.float32), rng.uniform(0.4, 1.0))
    return inside, depth.astype(np.float32), soft


class RandSyntheticLesiond(Randomizable, MapTransform):
    """Insert up to ``max_lesions`` synthetic lesions into an image crop and add them to its binary label.

    Lesions are placed at random voxels of host tissue (normalised value in ``host_range``, so not in air
    or on metal) whose lesion footprint does not touch the existing label.  Diameters are drawn
    log-uniformly in ``diameter_mm``; the absolute contrast is drawn in ``contrast`` (foreground-std units,
    uniformly or, with ``contrast_sampling="log"``, log-uniformly), brighter with probability ``p_bright``
    (otherwise darker); the host texture shows through a fraction of the lesion
    and noise of the host's level is added.  Optional cystic/necrotic core (``p_core``) and enhancing rim
    (``p_rim``).

    Args:
        keys: ``(image_key, label_key)``.
        prob: probability of inserting lesions into a crop that holds a labelled tumour.
        spacing: voxel size in mm of the crop (the training spacing).
        diameter_mm: (min, max) lesion diameter.
        max_lesions: lesions per crop (1..max, uniform).
        contrast: (min, max) absolute contrast in foreground-std units.  Soft-tissue lesions in CT are low
            in these units: a liver metastasis 60 HU below its host is about 0.4 std of a body whose
            foreground spans fat, muscle and bone.
        contrast_sampling: ``"uniform"`` or ``"log"`` (log-uniform: as many lesions between 0.2 and 0.4 as
            between 1.5 and 3.0, so faint lesions are common).
        p_bright: probability that a lesion is brighter than its host.
        p_core, p_rim: probabilities of a necrotic core and of rim enhancement.
        host_range: accepted normalised host values at the centre.
        prob_empty: probability of inserting lesions into a crop whose label is empty (host-only scans,
            background crops); the rest stay empty, so the automatic mode also learns to find nothing.
        instance_labels: label each inserted lesion with its own value (the crop's existing tumour stays 1,
            lesions get 2, 3, ...; in an empty crop 1, 2, ...), so that training can take each lesion as a
            separate click target (``SAT3DTrainer(targets_per_crop=...)``); otherwise every lesion is 1.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        diameter_mm: Sequence[float] = (3.0, 80.0),
        max_lesions: int = 2,
        contrast: Sequence[float] = (0.4, 3.0),
        contrast_sampling: str = "uniform",
        p_bright: float = 0.6,
        p_core: float = 0.2,
        p_rim: float = 0.2,
        host_range: Sequence[float] = (-1.5, 2.0),
        prob_empty: float = 0.85,
        instance_labels: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must be (image_key, label_key), got {self.keys}.")
        if not 0 < diameter_mm[0] <= diameter_mm[1]:
            raise ValueError(f"diameter_mm must be (min, max) with 0 < min <= max, got {diameter_mm}.")
        self.prob = float(prob)
        self.spacing = np.asarray(spacing, dtype=np.float32)
        self.diameter_mm = (float(diameter_mm[0]), float(diameter_mm[1]))
        self.max_lesions = int(max_lesions)
        if not 0 < float(contrast[0]) <= float(contrast[1]):
            raise ValueError(f"contrast must be (min, max) with 0 < min <= max, got {contrast}.")
        self.contrast = (float(contrast[0]), float(contrast[1]))
        if contrast_sampling not in ("uniform", "log"):
            raise ValueError(f"contrast_sampling must be 'uniform' or 'log', got {contrast_sampling!r}.")
        self.contrast_sampling = contrast_sampling
        self.p_bright, self.p_core, self.p_rim = float(p_bright), float(p_core), float(p_rim)
        self.host_range = (float(host_range[0]), float(host_range[1]))
        self.prob_empty = float(prob_empty)
        self.instance_labels = bool(instance_labels)

    def randomize(self, data: Any = None) -> None:  # noqa: D102 - draws happen in __call__
        pass

    def _insert(self, img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> bool:
        shape = img.shape
        d_mm = float(np.exp(rng.uniform(np.log(self.diameter_mm[0]), np.log(self.diameter_mm[1]))))
        radius = d_mm / 2.0 / float(self.spacing.mean())
        radius = min(radius, 0.45 * min(shape))
        host_ok = (img > self.host_range[0]) & (img < self.host_range[1])
        far = ndimage.distance_transform_edt(~(lab > 0)) > radius * 1.2 if lab.any() else np.ones(shape, bool)
        cand = np.argwhere(host_ok & far)
        if len(cand) == 0:
            return False
        centre = cand[rng.integers(len(cand))].astype(np.float32) + rng.uniform(-0.5, 0.5, 3)
        style = rng.choice(["solid", "lobulated", "irregular"], p=[0.3, 0.4, 0.3])
        inside, depth, soft = draw_lesion(shape, centre, radius, rng, style)
        if inside.sum() < 1:
            return False
        box = ndimage.binary_dilation(inside, iterations=2)
        host_mean = float(np.median(img[box])) if box.any() else 0.0
        resid = img - ndimage.gaussian_filter(img, 1.0)
        noise_sd = float(1.4826 * np.median(np.abs(resid[box] - np.median(resid[box])))) if box.any() else 0.05
        lo, hi = self.contrast
        c = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if self.contrast_sampling == "log" else rng.uniform(lo, hi)
        c *= 1.0 if rng.random() < self.p_bright else -1.0
        value = np.full(shape, host_mean + c, np.float32)
        value += 0.15 * abs(c) * _smooth_field(shape, max(radius / 3, 1.0), rng)  # internal heterogeneity
        if rng.random() < self.p_core and radius > 3:
            core = depth > rng.uniform(0.35, 0.6)
            value[core] = host_mean - abs(c) * rng.uniform(0.3, 1.2) if c > 0 else host_mean + c * rng.uniform(1.3, 2.0)
        if rng.random() < self.p_rim and radius > 3:
            rim = (depth > 0) & (depth < rng.uniform(0.15, 0.3))
            value[rim] += abs(c) * rng.uniform(0.5, 1.2)
        value += rng.standard_normal(shape).astype(np.float32) * noise_sd
        mix = soft * rng.uniform(0.75, 1.0)  # a little host texture shows through
        mix[lab > 0] = 0.0  # a lesion never paints over a labelled tumour or an earlier lesion
        img[...] = (1.0 - mix) * img + mix * value
        lab[inside & (lab == 0)] = int(lab.max()) + 1 if self.instance_labels else 1
        return True

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ikey, lkey = self.keys
        img_t, lab_t = d[ikey], d[lkey]
        lab0 = np.asarray(torch.as_tensor(lab_t)[0].cpu().numpy() > 0.5)
        empty = not lab0.any()
        rng = np.random.default_rng(int(self.R.randint(0, 2**31 - 1)))  # MONAI seeds self.R (RandomState)
        if not rng.random() < (self.prob_empty if empty else self.prob):
            return d
        img = torch.as_tensor(img_t)[0].detach().cpu().numpy().astype(np.float32).copy()
        lab = lab0.astype(np.uint8)
        for _ in range(int(rng.integers(1, self.max_lesions + 1))):
            self._insert(img, lab, rng)
        d[ikey] = _like(img_t, img)
        d[lkey] = _like(lab_t, lab.astype(np.float32))
        return d


def _like(ref: Any, arr: np.ndarray) -> Any:
    out = torch.as_tensor(arr)[None].to(torch.as_tensor(ref).dtype)
    if hasattr(ref, "meta"):
        from monai.data import MetaTensor

        return MetaTensor(out, meta=dict(ref.meta), applied_operations=list(getattr(ref, "applied_operations", [])))
    return out if isinstance(ref, torch.Tensor) else out.numpy()
