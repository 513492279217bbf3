"""The inverse of our Spacingd (Invertd restoring the input grid) equals MONAI's, also when it samples a box only."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from sat3d.transforms import Spacingd

_C, _S = np.cos(0.2), np.sin(0.2)
#: a scanner-like oblique affine: a rotation times anisotropic voxel sizes
OBLIQUE = np.array([[-_C * 0.9, _S * 1.1, 0, 20.0], [_S * 0.9, _C * 1.1, 0, -5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
#: a sheared affine: the resampling is not axis-aligned in voxel space
SHEARED = np.array([[-0.9, 0.1, 0, 20.0], [0.05, 1.1, 0, -5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])


def _pred_on_model_grid(mode: str, where: str, affine=OBLIQUE):
    """A 2-channel 'prediction' on the resampled grid: constant background, a blob where asked."""
    img = MetaTensor(torch.zeros(1, 41, 37, 23), affine=torch.as_tensor(affine))
    ours = Spacingd("image", pixdim=(1.5, 1.5, 1.5), mode=mode)
    grid = ours({"image": img})["image"]
    gen = torch.Generator().manual_seed(0)
    vals = torch.empty(2, *grid.shape[1:])
    vals[0], vals[1] = -7.0, 0.25  # background logits and confidence ...
    vals += (torch.rand(vals.shape, generator=gen) - 0.5) * 4e-6  # ... up to the rounding that blending windows leaves
    n = grid.shape[1:]
    if where == "inside":
        box = (slice(5, 12), slice(4, 9), slice(6, 10))
    elif where == "edges":  # touches the low end of axis 0 and the high end of axis 2
        box = (slice(0, 6), slice(8, 14), slice(n[2] - 4, n[2]))
    else:  # everywhere: the general path
        box = (slice(None),) * 3
    vals[(slice(None), *box)] = torch.rand(2, *vals[(0, *box)].shape, generator=gen) * 10 - 5
    pred = MetaTensor(vals, affine=grid.affine.clone(), meta=dict(grid.meta))
    pred.applied_operations = copy.deepcopy(grid.applied_operations)
    return ours, pred


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("where", ["inside", "edges", "everywhere", "sheared"])
def test_boxed_inverse_equals_monais(mode, where):
    if where == "sheared":
        ours, pred = _pred_on_model_grid(mode, "inside", SHEARED)
    else:
        ours, pred = _pred_on_model_grid(mode, where)
    fast = ours.inverse({"image": copy.deepcopy(pred)})["image"]
    # MONAI's own inverse, run by the same transform instance (MONAI checks that the instance matches)
    slow = SpatialResample.inverse(ours.spacing_transform.sp_resample, copy.deepcopy(pred))
    assert fast.shape == slow.shape == (2, 41, 37, 23)
    np.testing.assert_allclose(np.asarray(fast.affine), np.asarray(slow.affine), atol=1e-9)
    np.testing.assert_allclose(fast.as_tensor().numpy(), slow.as_tensor().numpy(), atol=1e-4)
    assert len(fast.applied_operations) == len(slow.applied_operations) == 0
    box = ours.spacing_transform.sp_resample.last_box
    if where in ("inside", "edges"):  # only a box was sampled; the blob came back, the rest is the background exactly
        assert box is not None and np.prod([b - a + 1 for a, b in box]) < 0.5 * fast[0].numel()
        assert ((fast[0] + 7.0).abs() > 1e-3).any() and (fast[0] == -7.0).sum() > 0.5 * fast[0].numel()
    elif where == "everywhere":  # the whole output is sampled (separably when bilinear)
        assert box == [(0, n - 1) for n in fast.shape[1:]]
    else:  # a sheared grid: MONAI's own resampling
        assert box is None


def test_reader_cache_returns_what_a_fresh_read_returns(tmp_path):
    """MONAI Label reads the same study for every click: the cached read equals an uncached one (scaled int16,
    oblique header), each read gets its own copy, and a rewritten file is read again."""
    import nibabel as nib
    from monai.transforms import LoadImaged
    from sat3d.volumes import ExactNibabelReader

    path = tmp_path / "ct.nii.gz"
    raw = np.random.default_rng(0).integers(-1000, 1000, (20, 18, 12)).astype(np.int16)
    img = nib.Nifti1Image(raw, OBLIQUE)
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, str(path))
    reader = ExactNibabelReader(cache_size=1)
    cached = LoadImaged("image", image_only=True, dtype=None, reader=reader)
    plain = LoadImaged("image", image_only=True, dtype=None, reader=ExactNibabelReader())
    ref = plain({"image": str(path)})["image"]
    first = cached({"image": str(path)})["image"]
    first.fill_(0)  # a transform writing into its input must not reach the cache
    second = cached({"image": str(path)})["image"]
    assert reader.hits == 1
    for got in (second,):
        assert got.dtype == ref.dtype and torch.equal(got.as_tensor(), ref.as_tensor())
        np.testing.assert_array_equal(np.asarray(got.affine), np.asarray(ref.affine))
        assert float(got.as_tensor()[0, 0, 0]) == float(raw[0, 0, 0]) * 0.5 - 1024.0
    nib.save(nib.Nifti1Image(raw[::-1].copy(), OBLIQUE), str(path))  # rewritten (other size/mtime): read again
    third = cached({"image": str(path)})["image"]
    assert reader.hits == 1 and torch.equal(third.as_tensor(), torch.as_tensor(raw[::-1].astype(third.numpy().dtype)))
