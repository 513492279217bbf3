"""The exported bundle runs with only MONAI installed: the installed sat3d is made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_sphere_volume
from sat3d import build_sat3d
from sat3d.export import export_bundle, main


def test_export_refuses_to_overwrite(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        export_bundle(out)
    assert main(["--output", str(out)]) == 2 and (out / "keep.txt").exists()
    export_bundle(out, force=True)
    assert not (out / "keep.txt").exists() and (out / "configs" / "inference.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_exported_bundle_runs_standalone(tmp_path):
    old = os.umask(0o022)
    try:
        out = export_bundle(tmp_path / "sat3d_bundle")
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755, "the exported folder must be readable (not mkdtemp's 0700)"
    assert not (out / "models" / "experimental").exists(), "experimental weights must not travel with the bundle"
    assert (out / "sat3d" / "modeling" / "sat3d.py").is_file() and (out / "configs" / "metadata.json").is_file()
    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    torch.save(net.state_dict(), out / "models" / "model.pt")
    data = tmp_path / "data"
    data.mkdir()
    img, _, aff = make_sphere_volume()
    nib.save(nib.Nifti1Image(img, aff), str(data / "a.nii.gz"))
    # a decoy `sat3d` earlier on the path than site-packages: importing anything but the bundle's copy fails
    decoy = tmp_path / "decoy" / "sat3d"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the installed sat3d must not be used')\n")
    env = {**os.environ, "PYTHONPATH": str(decoy.parent)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    check = subprocess.run([sys.executable, "-c", "import sat3d"], cwd=work, env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "must not be used" in check.stderr
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(out / "configs" / "inference.json"),
           "--bundle_root", str(out), "--dataset_dir", str(data), "--output_dir", str(tmp_path / "pred"), "--preset", "sat3d_tiny", "--roi_size", "[32,32,32]"]
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"loaded weights from {out / 'models' / 'model.pt'}" in res.stdout + res.stderr
    src = nib.load(str(data / "a.nii.gz"))
    for name in ("a_mask.nii.gz", "a_confidence.nii.gz"):
        out_img = nib.load(str(tmp_path / "pred" / name))
        assert out_img.shape == src.shape and np.allclose(out_img.affine, src.affine), name
