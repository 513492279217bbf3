"""Folder inference never misplaces, loses or mislabels a result (hostile inputs, random tiny weights)."""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE
from monai.bundle import ConfigParser

INFER = str(BUNDLE / "configs" / "inference.json")
TINY = {"preset": "sat3d_tiny", "roi_size": [32, 32, 32], "require_weights": False, "fail_on_error": False}

sitk = pytest.importorskip("SimpleITK")


def run_folder(data: Path, out: Path, clicks: Path | None = None, **over) -> list[dict]:
    cp = ConfigParser()
    cp.read_config(INFER)
    for k, v in {"dataset_dir": str(data), "output_dir": str(out), "clicks_file": str(clicks) if clicks else None, **TINY, **over}.items():
        cp[k] = v
    torch.manual_seed(0)
    return cp.get_parsed_content("evaluator").run()


def _volume(shape=(12, 14, 10), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, shape).astype(np.float32)


def _save(path: Path, arr: np.ndarray, affine: np.ndarray, qcode=1, scode=1) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    nib.save(img, str(path))


def _same_place(src: Path, out: Path) -> None:
    a, b = nib.load(str(src)), nib.load(str(out))
    assert a.shape == b.shape, (src.name, a.shape, b.shape)
    assert np.allclose(a.affine, b.affine), src.name
    for key in ("qform_code", "sform_code"):
        assert int(a.header[key]) == int(b.header[key]), (src.name, key)
    ia, ib = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))  # a second reader (ITK, as in 3D Slicer)
    assert np.allclose(ia.GetOrigin(), ib.GetOrigin()) and np.allclose(ia.GetDirection(), ib.GetDirection())
    assert np.allclose(ia.GetSpacing(), ib.GetSpacing()), src.name


def _orientations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((4, 4))
            for i, (p, s) in enumerate(zip(perm, signs)):
                m[p, i] = 1.5 * s
            m[:3, 3] = [10.0, -20.0, 5.0]
            m[3, 3] = 1
            yield f"o_{''.join(map(str, perm))}_{''.join('p' if s > 0 else 'm' for s in signs)}", m


def test_all_48_orientations_and_an_oblique_round_trip(tmp_path):
    """Coronal/sagittal/permuted volumes failed with 'Singular matrix'; each must keep shape, header and geometry,
    and a (non-integer) voxel click must land on the voxel it names."""
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    cases = dict(_orientations())
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = (rot @ np.eye(3)[[2, 0, 1]]) * 1.5
    cases["oblique_permuted"] = oblique
    click = [7.4, 4.6, 3.2]  # rounds to (7, 5, 3) in the file's own grid, in every orientation
    clicks = {}
    for name, aff in cases.items():
        _save(data / f"{name}.nii.gz", _volume(), aff)
        clicks[name] = {"space": "voxel", "positive": [click]}
    cf = tmp_path / "clicks.json"
    cf.write_text(json.dumps(clicks))
    rows = run_folder(data, out, cf)
    assert len(rows) == 49 and all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"][:2]
    for name in cases:
        _same_place(data / f"{name}.nii.gz", out / f"{name}_mask.nii.gz")
        _same_place(data / f"{name}.nii.gz", out / f"{name}_confidence.nii.gz")
        mask = np.asarray(nib.load(str(out / f"{name}_mask.nii.gz")).dataobj)
        assert mask[7, 5, 3] == 1, f"{name}: the clicked voxel must be tumour (click_radius 1)"
    # a non-empty mask comes with the IoU head's quality estimate in the results table
    assert all(isinstance(r["predicted_iou"], float) and math.isfinite(r["predicted_iou"]) for r in rows)


def test_header_codes_are_kept_or_the_file_fails_clearly(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    arr = _volume()
    aff = np.diag([1.5, 2.0, 2.5, 1.0])
    aff[:3, 3] = [10, -20, 30]
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, code=0)
    img.set_sform(aff, code=0)
    nib.save(img, str(data / "nocodes.nii.gz"))
    assert int(nib.load(str(data / "nocodes.nii.gz")).header["sform_code"]) == 0
    img = nib.Nifti1Image(arr, aff)
    img.set_sform(aff, code=2)
    img.set_qform(np.eye(4), code=0)  # identity qform (code 0): MONAI's reader used it and lost the origin
    nib.save(img, str(data / "sform_only.nii.gz"))
    singular = aff.copy()
    singular[2, 2] = 0
    img = nib.Nifti1Image(arr, aff)
    img.set_sform(singular, code=2)
    nib.save(img, str(data / "singular.nii.gz"))
    rows = {r["file"]: r for r in run_folder(data, out)}
    for name in ("nocodes", "sform_only"):
        assert rows[f"{name}.nii.gz"]["status"] == "ok"
        _same_place(data / f"{name}.nii.gz", out / f"{name}_mask.nii.gz")
    voxel_ml = 1.5 * 2.0 * 2.5 / 1000
    assert rows["sform_only.nii.gz"]["volume_ml"] == pytest.approx(rows["sform_only.nii.gz"]["voxels"] * voxel_ml)
    assert rows["singular.nii.gz"]["status"] == "error" and "singular" in rows["singular.nii.gz"]["error"]
    assert not (out / "singular_mask.nii.gz").exists()
    cf = tmp_path / "clicks.json"
    cf.write_text(json.dumps({"nocodes": {"space": "world", "positive": [[1, 2, 3]]}}))
    row = {r["file"]: r for r in run_folder(data, tmp_path / "out2", cf)}["nocodes.nii.gz"]
    assert row["status"] == "error" and "no world frame" in row["error"]


def test_one_stem_two_files_and_odd_names(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    _save(data / "case.nii", _volume(), aff)
    _save(data / "case.nii.gz", _volume(seed=1), aff)
    _save(data / "UPPER.NII.GZ", _volume(), aff)
    _save(data / "four_d.nii.gz", _volume()[..., None], aff)
    os.symlink(tmp_path / "gone.nii.gz", data / "dangling.nii.gz")
    rows = {r["file"]: r for r in run_folder(data, out)}
    for name in ("case.nii", "case.nii.gz"):
        assert rows[name]["status"] == "error" and "share the case name 'case'" in rows[name]["error"]
    assert not (out / "case_mask.nii.gz").exists()
    assert rows["UPPER.NII.GZ"]["status"] == "ok" and (out / "UPPER_mask.nii.gz").is_file()
    assert rows["dangling.nii.gz"]["status"] == "error" and "broken symbolic link" in rows["dangling.nii.gz"]["error"]
    assert rows["four_d.nii.gz"]["status"] == "ok"
    assert nib.load(str(out / "four_d_mask.nii.gz")).shape == (12, 14, 10, 1), "a (x, y, z, 1) input gives a 4D output"


def test_crash_leftovers_are_repaired_and_outputs_never_become_inputs(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    _save(data / "a.nii.gz", _volume(), np.diag([1.5, 1.5, 1.5, 1.0]))
    _save(data / "b.nii.gz", _volume(seed=2), np.diag([1.5, 1.5, 1.5, 1.0]))
    run_folder(data, data)  # outputs next to the inputs
    # a kill while b's confidence map was written: its mask exists, the confidence map and a temp file do not / do
    (data / "b_confidence.nii.gz").unlink()
    (data / ".b_confidence.nii.gz.k2j3h4.tmp.nii.gz").write_bytes(b"")
    rows = {r["file"]: r for r in run_folder(data, data)}
    assert set(rows) == {"a.nii.gz", "b.nii.gz"}, "our own outputs must not be read as inputs"
    assert rows["a.nii.gz"]["status"].startswith("skipped") and rows["b.nii.gz"]["status"] == "ok"
    assert (data / "b_confidence.nii.gz").is_file() and not list(data.glob(".*tmp*"))


def test_results_json_valid_and_permissions_follow_umask(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    _save(data / "flat.nii.gz", np.full((12, 14, 10), -1000.0, np.float32), np.diag([1.5, 1.5, 1.5, 1.0]))
    old = os.umask(0o022)
    try:
        run_folder(data, out, threshold=0.999999)  # nothing above threshold: an empty mask
    finally:
        os.umask(old)
    text = next(out.glob("results-*.json")).read_text()
    rows = json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert rows[0]["voxels"] == 0 and rows[0]["mean_confidence"] is None and rows[0]["centre_mm"] is None
    assert rows[0]["predicted_iou"] is None  # no mask, no quality estimate
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name


def test_clicks_entries_and_conflicts(tmp_path, caplog):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    _save(data / "a.nii.gz", _volume(), np.diag([1.5, 1.5, 1.5, 1.0]))
    cf = tmp_path / "clicks.json"
    cf.write_text(json.dumps({"a": {"space": "voxel", "positive": [[3, 3, 3]], "negative": [[3.2, 2.9, 3.0]]}}))
    with caplog.at_level("WARNING"):
        rows = run_folder(data, out, cf)
    assert rows[0]["status"] == "ok" and "same voxel" in caplog.text
    cf.write_text(json.dumps({"a": {"positive": [], "negative": []}}))
    assert run_folder(data, tmp_path / "out2", cf)[0]["status"] == "ok", "empty click lists are no clicks"


def _bundle(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", INFER, "--preset", "sat3d_tiny",
           "--roi_size", "[32,32,32]", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_errors_are_one_line_each_without_tracebacks(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    _save(data / "good.nii.gz", _volume(), np.diag([1.5, 1.5, 1.5, 1.0]))
    big = _volume().astype(np.float64)
    big[0, 0, 0] = 1e300
    _save(data / "overflow.nii.gz", big, np.diag([1.5, 1.5, 1.5, 1.0]))
    res = _bundle("--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"), "--require_weights", "false")
    text = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in text
    assert "exceed the float32 range" in text and "NaN" not in text.split("overflow.nii.gz")[1]
    assert text.count("FAILED overflow.nii.gz") == 1
    assert "1 of 2 files failed" in res.stdout.strip().splitlines()[-2], "the summary comes last"
    # failures before any file: one line, exit 2, nothing loaded
    (tmp_path / "folder_clicks").mkdir()
    res = _bundle("--dataset_dir", str(data), "--output_dir", str(tmp_path / "o2"), "--require_weights", "false",
                  "--clicks_file", str(tmp_path / "folder_clicks"))
    assert res.returncode == 2 and "is a folder" in res.stderr + res.stdout and "Traceback" not in res.stderr
    (tmp_path / "afile").write_text("x")
    res = _bundle("--dataset_dir", str(data), "--output_dir", str(tmp_path / "afile"), "--require_weights", "false")
    assert res.returncode == 2 and "not writable" in res.stderr + res.stdout and "loaded weights" not in res.stderr
    (tmp_path / "notes.pt").write_text("not weights")
    res = _bundle("--dataset_dir", str(data), "--output_dir", str(tmp_path / "o3"), "--ckpt_path", str(tmp_path / "notes.pt"))
    assert res.returncode == 2 and "notes.pt is not a readable SAT3D weights file" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_torchrun_shards_files_and_merges_one_table(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    for i in range(5):
        _save(data / f"c{i}.nii.gz", _volume(seed=i), np.diag([1.5, 1.5, 1.5, 1.0]))
    cfg = f"['{INFER}','{BUNDLE / 'configs' / 'multi_gpu_inference.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", "29531", "-m", "monai.bundle",
           "run", "inference", "--config_file", cfg, "--dataset_dir", str(data), "--output_dir", str(out),
           "--preset", "sat3d_tiny", "--roi_size", "[32,32,32]", "--require_weights", "false"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    tables = list(out.glob("results-*.json"))
    assert len(tables) == 1, "one merged results table"
    rows = json.loads(tables[0].read_text())
    assert sorted(r["file"] for r in rows) == [f"c{i}.nii.gz" for i in range(5)]
    assert {r["rank"] for r in rows} == {0, 1} and all(r["status"] == "ok" for r in rows)
    assert len(list(out.glob("*_mask.nii.gz"))) == 5
