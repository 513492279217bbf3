"""bundle/scripts/pack_cache.py: the train workflow's cache carried to a machine without the scans."""

from __future__ import annotations

import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE, make_sphere_volume
from monai.bundle import ConfigParser


def _script():
    spec = importlib.util.spec_from_file_location("pack_cache", BUNDLE / "scripts" / "pack_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_dataset(data_dir, cache_dir):
    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / "train.json"))
    cp.update({"bundle_root": str(BUNDLE), "dataset_dir": str(data_dir), "datalist": str(data_dir / "datalist.json"),
               "cache_dir": str(cache_dir), "check_datalist": False})
    return cp.get_parsed_content("train#dataset")


def test_the_train_workflow_reads_the_unpacked_cache_without_the_scans(tmp_path, capsys):
    """Catches cache names that do not match the train workflow's (it would read the missing scans), a crop
    that cuts into the label's box plus margin, labels changed, or images off by more than the 8-bit step."""
    data = tmp_path / "data"
    data.mkdir()
    cases = []
    for k, (shape, centre) in enumerate([((60, 50, 40), (20, 25, 20)), ((30, 30, 30), None)]):
        img, lab, aff = make_sphere_volume(shape=shape, centre=centre, radius=5.0, seed=k)
        nib.save(nib.Nifti1Image(img, aff), str(data / f"c{k}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(data / f"c{k}_seg.nii.gz"))
        cases.append({"image": f"c{k}.nii.gz", "label": f"c{k}_seg.nii.gz", "patient": f"p{k}", "weight": 1.0})
    host, _, aff = make_sphere_volume(shape=(30, 30, 30), seed=5)
    nib.save(nib.Nifti1Image(host, aff), str(data / "host.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(host.shape, np.uint8), aff), str(data / "host_seg.nii.gz"))
    cases.append({"image": "host.nii.gz", "label": "host_seg.nii.gz", "target_classes": []})
    (data / "datalist.json").write_text(json.dumps({"training": cases}))

    dataset = _train_dataset(data, tmp_path / "cache")
    for i in range(len(cases)):
        dataset[i]  # fills the cache, as a training epoch does
    originals = {p.name: torch.load(p, weights_only=False) for p in (tmp_path / "cache").glob("*.pt")}
    assert len(originals) == 3

    pc = _script()
    archive = tmp_path / "cache.npz.xz"
    assert pc.pack(str(data), str(data / "datalist.json"), str(tmp_path / "cache"), str(archive), margin=3, min_size=16) == 2
    assert "host.nii.gz: empty label; left out" in capsys.readouterr().out
    for f in data.glob("*.nii.gz"):
        f.unlink()  # the other machine has no scans
    assert pc.unpack(str(archive), str(tmp_path / "there")) == 2

    step, cropped = 2 * 5.0 / 255, 0
    for path in (tmp_path / "there").glob("*.pt"):
        got, orig = torch.load(path, weights_only=False), originals[path.name]
        assert {k: v for k, v in got.items() if k not in ("image", "label")} == \
            {k: v for k, v in orig.items() if k not in ("image", "label")}
        lab = orig["label"][0].numpy()
        nz = np.nonzero(lab)
        box = []
        for ax, n in enumerate(lab.shape):  # the label's box plus 3 voxels, at least 16, inside the volume
            lo, hi = int(nz[ax].min()) - 3, int(nz[ax].max()) + 4
            lo, hi = (lo, hi) if hi - lo >= 16 else ((lo + hi) // 2 - 8, (lo + hi) // 2 + 8)
            box.append(slice(max(lo, 0), min(hi, n)))
        box = tuple(box)
        assert got["label"].shape[1:] == lab[box].shape and np.array_equal(got["label"][0].numpy(), lab[box])
        cropped += got["image"].shape != orig["image"].shape
        err = np.abs(got["image"][0].numpy() - np.clip(orig["image"][0].numpy()[box], -5, 5)).max()
        assert err <= step / 2 + 1e-5, err
    assert cropped == 2  # both scans are larger than their label's box plus margin

    moved = _train_dataset(data, tmp_path / "there")
    for i in range(2):  # read from the unpacked cache: the scans are gone, so a cache miss would fail here
        out = moved[i][0]  # a list of crops (one)
        assert out["image"].shape[-3:] == (64, 64, 64)


def test_pack_names_the_problem_when_nothing_is_cached(tmp_path):
    img, lab, aff = make_sphere_volume()
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "a_seg.nii.gz"))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]}))
    with pytest.raises(SystemExit, match=r"ERROR nothing to pack: no entry of 'training' in .*datalist.json is in the cache"):
        _script().main(["pack", str(tmp_path), str(tmp_path / "datalist.json"), str(tmp_path / "empty"), str(tmp_path / "o.xz")])
    assert not (tmp_path / "o.xz").exists()
