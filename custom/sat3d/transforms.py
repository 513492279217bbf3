"""Dictionary transforms SAT3D adds to MONAI's: input validation and splitting the network output."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample
from monai.transforms import Spacingd as _MonaiSpacingd
from monai.utils import TraceKeys

__all__ = ["ValidateVolumed", "Spacingd", "BoxedInverseResample", "ForegroundNormalized", "IntensityNormalized", "ClicksFromRequestd", "loading_transforms", "crop_mix_weights"]


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
            name = Path(str(img.meta.get("filename_or_obj", key))).name if isinstance(img, MetaTensor) else key
            if img.ndim != 4:
                raise ValueError(f"{name}: expected one 3D volume (channel, x, y, z); got array of shape {tuple(img.shape)}.")
            if img.shape[0] != 1:
                raise ValueError(f"{name}: expected a single-channel volume, got {img.shape[0]} channels (4D/time series?).")
            if any(s < self.min_size for s in img.shape[1:]):
                raise ValueError(f"{name}: image of size {list(img.shape[1:])} is 2D or degenerate; a 3D volume is required.")
            t = torch.as_tensor(img)
            if not torch.isfinite(t).all():
                n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
                parts = [f"{n} {w}" for n, w in ((n_nan, "NaN"), (n_inf, "infinite")) if n]
                raise ValueError(f"{name}: image contains {' and '.join(parts)} voxels.")
            if t.is_floating_point() and t.dtype == torch.float64:
                big = int((t.abs() > torch.finfo(torch.float32).max).sum())
                if big:
                    raise ValueError(f"{name}: {big} voxels exceed the float32 range (|value| > 3.4e38); the values are corrupt or in the wrong units.")
        return d


class BoxedInverseResample(SpatialResample):
    """MONAI's ``SpatialResample`` whose inverse resamples only the box where the image is not constant.

    A prediction made in clicked-windows mode is background (one value per channel) outside the clicked
    windows; restoring the input grid (``Invertd``) then spends most of its time interpolating that constant.
    Only the part of the output that can see the non-constant voxels (their box plus one voxel, mapped to the
    output grid) is sampled, with the same voxel mapping, interpolation and border padding; the rest is the
    background value, which is what interpolating it gives (up to ``tolerance``, relative: blended
    background windows carry rounding errors).  Bilinear sampling is separable here (the grid is
    axis-aligned), so it runs as three 1-D interpolations (:func:`_separable_linear`), about twice as fast as
    MONAI's on a whole 256x256x160 grid.  For grids that are not axis-aligned, and modes other than
    bilinear/nearest with border padding, MONAI's inverse runs unchanged.  The forward transform is MONAI's.
    """

    #: relative deviation from the background value still treated as background
    tolerance = 1e-5
    #: the output box the last inverse sampled (``None``: it ran MONAI's full resampling)
    last_box: list[tuple[int, int]] | None = None

    def inverse(self, data: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.last_box = None
        if not isinstance(data, MetaTensor) or data.ndim != 4 or not data.applied_operations:
            return super().inverse(data)
        transform = data.applied_operations[-1]
        extra = transform.get(TraceKeys.EXTRA_INFO, {})
        if extra.get("mode") not in ("bilinear", "nearest") or extra.get("padding_mode") != "border" or "src_affine" not in extra:
            return super().inverse(data)
        x = data.as_tensor()
        bg = x[:, :1, :1, :1]
        # blending windows of background gives it back up to rounding (-20.0000076 for -20): that counts as constant
        varying = ((x - bg).abs() > self.tolerance * bg.abs().clamp(min=1.0)).any(0)
        out_size = [int(v) for v in transform[TraceKeys.ORIG_SIZE]]
        dst_affine = torch.as_tensor(extra["src_affine"], dtype=torch.float64).cpu()
        src_affine = torch.as_tensor(data.affine, dtype=torch.float64).cpu()
        xform = torch.linalg.solve(src_affine, dst_affine)  # output voxel -> input voxel, as MONAI's resampling
        lin = xform[:3, :3]
        if not torch.allclose(lin, torch.diag(torch.diagonal(lin)), atol=1e-6) or bool((torch.diagonal(lin).abs() < 1e-9).any()):
            return super().inverse(data)  # not axis-aligned: MONAI's general resampling
        self.pop_transform(data)
        out = bg.to(torch.float32).expand(x.shape[0], *out_size).clone()
        if bool(varying.any()):
            idx = varying.nonzero()
            lo, hi = idx.min(0).values.tolist(), idx.max(0).values.tolist()
            box = []
            for ax in range(3):
                scale, shift = float(xform[ax, ax]), float(xform[ax, 3])
                # input coordinates whose (border-clamped) interpolation sees a varying voxel
                q0 = -math.inf if lo[ax] == 0 else lo[ax] - 1.0
                q1 = math.inf if hi[ax] == x.shape[ax + 1] - 1 else hi[ax] + 1.0
                p0, p1 = sorted(((q0 - shift) / scale, (q1 - shift) / scale))
                box.append((max(int(math.floor(max(p0, -1.0))), 0), min(int(math.ceil(min(p1, float(out_size[ax])))), out_size[ax] - 1)))
            self.last_box = box
            if all(a <= b for a, b in box):
                if extra["mode"] == "bilinear":
                    vals = _separable_linear(x.to(torch.float32), xform, box)
                else:
                    grids = torch.meshgrid(*[torch.arange(a, b + 1, dtype=torch.float64) for a, b in box], indexing="ij")
                    pts = torch.stack([*grids, torch.ones_like(grids[0])], -1) @ xform.T
                    norm = [2.0 * pts[..., ax] / max(x.shape[ax + 1] - 1, 1) - 1.0 for ax in range(3)]
                    grid = torch.stack(norm[::-1], -1)[None].to(torch.float32)
                    vals = torch.nn.functional.grid_sample(x[None].to(torch.float32), grid, mode=extra["mode"],
                                                           padding_mode="border", align_corners=True)[0]
                out[:, box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1, box[2][0]:box[2][1] + 1] = vals
        res = MetaTensor(out, affine=dst_affine.to(torch.float64), meta=dict(data.meta))
        res.applied_operations = data.applied_operations
        return res


def _separable_linear(x: torch.Tensor, xform: torch.Tensor, box: list[tuple[int, int]]) -> torch.Tensor:
    """Trilinear resampling of ``x`` ``(C, D, H, W)`` at the output voxels of ``box`` under the axis-aligned
    ``xform`` (output voxel -> input voxel), with border padding: ``grid_sample``'s result (bilinear,
    ``align_corners=True``, border) computed as three 1-D interpolations, each a product with a sparse-banded
    matrix (several times faster on a CPU than sampling every voxel of a 3-D grid)."""
    y = x
    for ax, (a, b) in enumerate(box):
        n = x.shape[ax + 1]
        q = (torch.arange(a, b + 1, dtype=torch.float64) * float(xform[ax, ax]) + float(xform[ax, 3])).clamp(0, n - 1)
        i0 = q.floor().long()  # q <= n - 1 already
        w = q - i0
        m = torch.zeros(b - a + 1, n, dtype=torch.float64)
        rows = torch.arange(b - a + 1)
        m[rows, i0] += 1.0 - w
        m[rows, (i0 + 1).clamp(max=n - 1)] += w
        y = torch.movedim(torch.movedim(y, ax + 1, -1) @ m.T.to(y.dtype), -1, ax + 1)
    return y


class Spacingd(_MonaiSpacingd):
    """MONAI's ``Spacingd`` without its side effect on other entries, and with a fast inverse.

    MONAI's version calls ``update`` on every entry whose name starts with ``<key>_`` (meant for
    ``image_meta_dict``); MONAI Label's requests carry the string ``image_path``, so the server failed
    with "'str' object has no attribute 'update'".  Entries that are not dicts are set aside during the call.

    The inverse (``Invertd`` restoring the input grid) resamples only where the data is not constant (see
    :class:`BoxedInverseResample`): a click in MONAI Label computes a few windows of a large volume.

    ``pixdim=None`` keeps the input grid (weights trained on native grids, e.g. the authors'); the transform
    and its inverse are then identities.
    """

    def __init__(self, keys, pixdim, *args, **kwargs) -> None:
        self.keep_grid = pixdim is None
        super().__init__(keys, pixdim if pixdim is not None else 1.0, *args, **kwargs)
        sp = self.spacing_transform.sp_resample
        self.spacing_transform.sp_resample = BoxedInverseResample(
            mode=sp.mode, padding_mode=sp.padding_mode, align_corners=sp.align_corners, dtype=sp.dtype, lazy=sp.lazy)

    def inverse(self, data):  # noqa: D102
        return dict(data) if self.keep_grid else super().inverse(data)

    def __call__(self, data, lazy=None):  # noqa: D102
        if self.keep_grid:
            return dict(data)
        d = dict(data)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and not isinstance(d[k], dict)
                 and any(k.startswith(f"{key}_") for key in self.keys)}
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


def foreground_zscore(x: torch.Tensor, clip: float | None = 5.0) -> torch.Tensor:
    """Z-score ``x`` with the mean and std of its foreground, the voxels above the volume's mean.

    The foreground rule needs no modality: CT air, the zero background of MR and PET's cold body fall
    below the mean, so soft tissue (CT), tissue (MR) and uptake (PET) set the scale.  Values are clipped to
    ``[-clip, clip]`` (hot PET lesions and metal stay the brightest without dominating the input).
    """
    x = x.float()
    fg = x[x > x.mean()]
    if fg.numel() < 2:
        fg = x.reshape(-1)
    mu, sd = fg.mean(), fg.std()
    out = (x - mu) / torch.clamp(sd, min=1e-6)
    return out.clamp(-clip, clip) if clip else out


class ForegroundNormalized(MapTransform):
    """Per-volume intensity normalisation of SAT3D: see :func:`foreground_zscore`.

    Args:
        keys: image keys.
        clip: clip the z-scores to ``[-clip, clip]`` (``None``/0: no clipping).
    """

    def __init__(self, keys: KeysCollection, clip: float | None = 5.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if clip is not None and clip < 0:
            raise ValueError(f"clip must be positive or None, got {clip}.")
        self.clip = clip

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            out = torch.stack([foreground_zscore(torch.as_tensor(c), self.clip) for c in img])
            d[key] = MetaTensor(out, meta=dict(img.meta), applied_operations=list(img.applied_operations)) \
                if isinstance(img, MetaTensor) else out
        return d


class IntensityNormalized(MapTransform):
    """The volume-level intensity normalisation a weights configuration names (its ``intensity`` entry).

    * ``{"name": "foreground_zscore", "clip": c}`` (ours): :func:`foreground_zscore`.
    * ``{"name": "window_zscore_positive", "ct_clamp": [lo, hi]}`` (the authors' weights): CT is clamped to
      ``[lo, hi]`` here; each window is z-normalised later, by the session
      (:func:`sat3d.paper_preprocessing.zscore_positive`).  Whether the image is CT comes from ``modality``;
      with ``modality=None`` an image whose minimum is below -500 (Hounsfield units: only CT has such
      values) counts as CT.

    Args:
        keys: image keys.
        intensity: the configuration's ``intensity`` dict.
        modality: ``"CT"``, another modality name, or ``None`` (guess as above).
    """

    NAMES = ("foreground_zscore", "window_zscore_positive")

    def __init__(self, keys: KeysCollection, intensity: Mapping[str, Any], modality: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.intensity = dict(intensity or {})
        if self.intensity.get("name") not in self.NAMES:
            raise ValueError(f"unknown intensity normalisation {self.intensity.get('name')!r}; expected one of {self.NAMES}.")
        self.modality = modality
        self._zscore = ForegroundNormalized(keys, clip=self.intensity.get("clip", 5.0), allow_missing_keys=allow_missing_keys) \
            if self.intensity["name"] == "foreground_zscore" else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self._zscore is not None:
            return self._zscore(data)
        d = dict(data)
        lo, hi = self.intensity.get("ct_clamp") or (None, None)
        for key in self.key_iterator(d):
            img = d[key]
            is_ct = self.modality.upper() == "CT" if self.modality else float(torch.as_tensor(img).min()) < -500.0
            if is_ct and lo is not None:
                out = torch.as_tensor(img).float().clamp(float(lo), float(hi))
                d[key] = MetaTensor(out, meta=dict(img.meta), applied_operations=list(img.applied_operations)) \
                    if isinstance(img, MetaTensor) else out
        return d


#: metadata key under which ClicksFromRequestd stores the clicks mapped into the preprocessed image
CLICKS_META_KEY = "sat3d_clicks"


try:  # MONAI Label serves requests with FastAPI: an HTTPException reaches the user as a readable 400
    from fastapi import HTTPException as _HTTPException
except ImportError:  # pragma: no cover - outside a MONAI Label server
    _HTTPException = None

if _HTTPException is not None:

    class BadClickRequest(_HTTPException, ValueError):
        """Malformed or out-of-image clicks: a ``ValueError`` that MONAI Label's server answers with status
        400 and the message (not a bare 500)."""

        def __init__(self, msg: str) -> None:
            _HTTPException.__init__(self, status_code=400, detail=msg)

        def __str__(self) -> str:
            return str(self.detail)

else:

    class BadClickRequest(ValueError):  # type: ignore[no-redef]
        """Malformed or out-of-image clicks (a ``ValueError``)."""


class ClicksFromRequestd(MapTransform):
    """Attach clicks from the data dict to the image's metadata, mapped into the preprocessed voxel grid.

    Reads positive clicks from ``foreground`` (MONAI Label API) or from the key named by ``label`` /
    any of ``label_names`` (3D Slicer's MONAI Label plugin sends deepedit clicks keyed by label name:
    ``{"tumour": [[i, j, k]], "background": [[i, j, k]], "label": "tumour"}``), negative clicks from
    ``background``: lists of ``[i, j, k]`` voxel indices of the image file as stored; and ``click_space``
    (``"voxel"`` default, or ``"world"`` for RAS mm).
    Must come after the spatial transforms (e.g. ``Orientationd``).  :class:`sat3d.inferer.SAT3DInferer`
    picks the clicks up from the metadata, so they reach the network through the plain
    ``inferer(inputs, network)`` call that MONAI Label makes.

    Raises:
        ValueError: naming the image when a click lies outside it or is malformed.
    """

    def __init__(self, keys: KeysCollection, foreground_key: str = "foreground", background_key: str = "background",
                 space_key: str = "click_space", label_names: tuple[str, ...] = ("tumour", "tumor", "lesion")) -> None:
        super().__init__(keys)
        self.foreground_key, self.background_key, self.space_key = foreground_key, background_key, space_key
        self.label_names = tuple(label_names)

    def _positive(self, d: Mapping[Hashable, Any]) -> Any:
        names = [self.foreground_key]
        if isinstance(d.get("label"), str) and d["label"] != self.background_key:
            names.append(d["label"])
        names += list(self.label_names)
        points: list = []
        for name in dict.fromkeys(names):
            value = d.get(name)
            if value is not None and not isinstance(value, str) and len(value):
                points += _as_list(value)
        return points

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from .clicks import clicks_to_voxels, load_click_entry

        d = dict(data)
        fg, bg = self._positive(d), d.get(self.background_key) or []
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                raise ValueError(f"{key!r} must be a MetaTensor with an affine to map clicks.")
            img.meta.pop(CLICKS_META_KEY, None)
            if not len(fg) and not len(bg):
                continue
            name = Path(str(img.meta.get("filename_or_obj", key))).name
            try:
                entry = load_click_entry({"space": d.get(self.space_key, "voxel"), "positive": _as_list(fg),
                                          "negative": _as_list(bg)}, f"clicks for {name}")
                pts, lbl = clicks_to_voxels(entry, img.meta["original_affine"], img.affine, img.shape[1:])
            except (ValueError, TypeError) as e:
                msg = str(e) if str(e).startswith(f"clicks for {name}") else f"{name}: {e}"
                raise BadClickRequest(msg) from None
            img.meta[CLICKS_META_KEY] = {"points": pts, "labels": lbl}
        return d


def _as_list(points: Any) -> list:
    if isinstance(points, torch.Tensor):
        return points.tolist()
    if hasattr(points, "tolist"):
        return points.tolist()
    return [list(p) for p in points]


def crop_mix_weights(anywhere_crop_prob: float) -> list[float]:
    """``OneOf`` weights of the training crops: ``[tumour/background crops, crops centred anywhere]``.

    Raises:
        ValueError: naming the knob, for a probability outside [0, 1] (MONAI's ``OneOf`` would only say that
            probabilities must not be negative).
    """
    p = float(anywhere_crop_prob)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"anywhere_crop_prob must be in [0, 1], got {anywhere_crop_prob}.")
    return [1.0 - p, p]


def loading_transforms(keys: KeysCollection = "image", spacing: Any = (1.5, 1.5, 1.5), intensity: Mapping[str, Any] | None = None,
                       modality: str | None = None, axcodes: str = "RAS", dtype: Any = "float32", reader_cache: int = 0) -> list:
    """The chain every workflow starts with, defined once: load (geometry exactly as the header states it),
    channel first, validate, reorient to ``axcodes``, resample to ``spacing``, normalise intensities.

    Training, validation, evaluation and inference (hence MONAI Label, which patches the ``LoadImaged`` it
    finds in the flat list) all build their preprocessing from this list plus their own transforms, so a model
    never sees volumes prepared differently from those it was trained on.

    Args:
        keys: the image key first, then label keys (resampled with nearest neighbour).
        spacing: target voxel size in mm (``None``: keep each volume's grid).
        intensity: the normalisation (see :class:`IntensityNormalized`).
        modality: the modality given for the whole run, if any.
        axcodes: orientation to reorient to.
        dtype: dtype the volumes are read as (``None``: as stored).
        reader_cache: files whose decoded voxels the reader keeps (see :class:`sat3d.volumes.ExactNibabelReader`).

    Returns:
        a list of transforms, to be concatenated with the workflow's own.
    """
    from monai.transforms import EnsureChannelFirstd, LoadImaged, Orientationd
    from monai.utils import ensure_tuple

    from .volumes import ExactNibabelReader

    keys = list(ensure_tuple(keys))
    if not keys:
        raise ValueError("loading_transforms needs at least the image key.")
    image = keys[0]
    np_dtype = None if dtype is None else np.dtype(str(dtype)).type
    return [
        LoadImaged(keys, image_only=True, dtype=np_dtype, reader=ExactNibabelReader(cache_size=reader_cache)),
        EnsureChannelFirstd(keys),
        ValidateVolumed(image),
        Orientationd(keys, axcodes=axcodes),
        Spacingd(keys, pixdim=spacing, mode=["bilinear"] + ["nearest"] * (len(keys) - 1)),
        IntensityNormalized(image, intensity=intensity or {}, modality=modality),
    ]
