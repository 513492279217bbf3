"""End-to-end folder inference through `python -m monai.bundle run inference` plus its building blocks."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE, SHARED, demo_data_module, make_sphere_volume
from monai.bundle import ConfigParser, verify_metadata
from sat3d.atomic import write_nifti_atomic
from sat3d.clicks import clicks_to_voxels, load_clicks_file
from sat3d.measures import mask_statistics

TINY = ["--preset", "sat3d_tiny", "--roi_size", "[32,32,32]", "--require_weights", "false"]


def run_inference(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
           str(BUNDLE / "configs" / "inference.json"), "--dataset_dir", str(data), "--output_dir", str(out), *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two good volumes (one with flipped, LPS-like axes), and a zoo of bad inputs."""
    d = tmp_path_factory.mktemp("in")
    img, _, aff = make_sphere_volume()
    _save(d / "good.nii.gz", img, aff)
    flipped = aff.copy()
    flipped[:2] *= -1  # x and y axes point the other way
    _save(d / "flipped.nii", img[:30], flipped)
    (d / "text.nii.gz").write_text("this is not a volume")
    raw = gzip.compress((d / "flipped.nii").read_bytes())
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    _save(d / "flat.nii.gz", img[:, :, :1], aff)
    nan = img.copy()
    nan[2, 3, 4] = np.nan
    _save(d / "nan.nii.gz", nan, aff)
    _save(d / "clicked_outside.nii.gz", img, aff)
    _save(d / "bad_clicks.nii.gz", img, aff)
    clicks = {
        "good.nii.gz": {"space": "voxel", "positive": [[20, 18, 22]], "negative": [[3, 3, 3]]},
        "flipped": {"space": "world", "positive": [list((flipped @ [10, 10, 10, 1])[:3])]},
        "clicked_outside.nii.gz": {"positive": [[500, 1, 1]]},
        "not_there.nii.gz": {"positive": [[1, 1, 1]]},
        "bad_clicks.nii.gz": {"positive": [[1, 2]]},
    }
    cf = tmp_path_factory.mktemp("clicks") / "clicks.json"
    cf.write_text(json.dumps(clicks))
    return d, cf


@pytest.fixture(scope="module")
def first_run(folder, tmp_path_factory):
    d, cf = folder
    out = tmp_path_factory.mktemp("out")
    return d, cf, out, run_inference(d, out, "--clicks_file", str(cf))


def _results(out: Path) -> dict[str, dict]:
    files = sorted(out.glob("results-*.json"))
    assert files, "no results file written"
    return {r["file"]: r for r in json.loads(files[-1].read_text())}


def test_good_files_written_with_input_geometry(first_run):
    d, _, out, proc = first_run
    for name, case in (("good.nii.gz", "good"), ("flipped.nii", "flipped")):
        src = nib.load(str(d / name))
        for kind, dtype in (("mask", np.uint8), ("confidence", np.float32)):
            o = nib.load(str(out / f"{case}_{kind}.nii.gz"))
            assert o.shape == src.shape, (name, kind)
            np.testing.assert_allclose(o.affine, src.affine, atol=1e-5)
            assert o.get_data_dtype() == dtype
        conf = nib.load(str(out / f"{case}_confidence.nii.gz")).get_fdata()
        assert conf.min() >= 0 and conf.max() <= 1
    rows = _results(out)
    assert rows["good.nii.gz"]["status"] == "ok" and rows["good.nii.gz"]["clicks"] == 2
    assert rows["flipped.nii"]["status"] == "ok" and rows["flipped.nii"]["clicks"] == 1
    mask = nib.load(str(out / "good_mask.nii.gz"))
    expected = mask_statistics(np.asarray(mask.dataobj), mask.affine)
    assert rows["good.nii.gz"]["volume_ml"] == pytest.approx(expected["volume_ml"])
    assert rows["good.nii.gz"]["components"] == expected["components"]
    assert any(p.name.startswith("results-") and p.suffix == ".csv" for p in out.iterdir())
    # clicks are honoured at the clicked voxels of the original files (voxel and world coordinates)
    good = np.asarray(nib.load(str(out / "good_mask.nii.gz")).dataobj)
    assert good[20, 18, 22] == 1 and good[3, 3, 3] == 0
    assert np.asarray(nib.load(str(out / "flipped_mask.nii.gz")).dataobj)[10, 10, 10] == 1
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize(
    "name, words",
    [
        ("text.nii.gz", ["text.nii.gz", "gzip"]),
        ("truncated.nii.gz", ["truncated.nii.gz"]),
        ("flat.nii.gz", ["flat.nii.gz", "2D"]),
        ("nan.nii.gz", ["nan.nii.gz", "NaN"]),
        ("clicked_outside.nii.gz", ["clicked_outside.nii.gz", "outside the image"]),
        ("bad_clicks.nii.gz", ["bad_clicks.nii.gz", "clicks.json", "three finite numbers"]),
    ],
)
def test_bad_files_reported_by_name_and_others_processed(first_run, name, words):
    _, _, out, proc = first_run
    assert proc.returncode != 0, "a run with failed files must end with an error status"
    row = _results(out)[name]
    assert row["status"] == "error"
    for w in words:
        assert w in row["error"], row["error"]
        assert w in proc.stdout + proc.stderr
    case = name.split(".")[0]
    assert not (out / f"{case}_mask.nii.gz").exists()


def test_unknown_clicks_entry_is_reported(first_run):
    *_, proc = first_run
    assert "not_there.nii.gz" in proc.stdout + proc.stderr


def test_no_silent_overwrite_and_explicit_overwrite(first_run, tmp_path):
    d, _, out, _ = first_run
    good = tmp_path / "in"
    good.mkdir()
    shutil.copy(d / "good.nii.gz", good / "good.nii.gz")
    before = (out / "good_mask.nii.gz").stat().st_mtime_ns
    proc = run_inference(good, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _results(out)["good.nii.gz"]["status"].startswith("skipped")
    assert (out / "good_mask.nii.gz").stat().st_mtime_ns == before
    proc = run_inference(good, out, "--overwrite", "true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _results(out)["good.nii.gz"]["status"] == "ok"
    assert (out / "good_mask.nii.gz").stat().st_mtime_ns != before
    assert len(list(out.glob("results-*.json"))) >= 3, "earlier results tables must be kept"


def test_empty_folder_and_malformed_clicks_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_inference(empty, tmp_path / "o1")
    assert proc.returncode != 0 and "contains no NIfTI file" in proc.stderr + proc.stdout
    bad = tmp_path / "clicks.json"
    bad.write_text('{"a.nii.gz": {"positive": [[1, 2]]}}')
    with pytest.raises(ValueError, match=r"clicks\.json.*'positive'.*three finite numbers"):
        load_clicks_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_clicks_file(bad)
    with pytest.raises(ValueError, match="'space' must be"):
        bad.write_text('{"a": {"space": "mm", "positive": [[1, 2, 3]]}}')
        load_clicks_file(bad)


def test_voxel_and_world_clicks_land_on_the_same_preprocessed_voxel(tmp_path):
    img, _, aff = make_sphere_volume(shape=(20, 24, 16))
    aff = aff.copy()
    aff[:2] *= -1  # LPS-like storage: reorientation to RAS flips two axes
    img[5, 7, 9] = 5000.0  # marker
    _save(tmp_path / "m.nii.gz", img, aff)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    pre = parser.get_parsed_content("preprocessing")
    data = pre({"image": str(tmp_path / "m.nii.gz")})
    image = data["image"]
    world = (aff @ [5, 7, 9, 1])[:3].tolist()
    v1, l1 = clicks_to_voxels({"space": "voxel", "positive": [[5, 7, 9]]}, image.meta["original_affine"], image.affine, image.shape[1:])
    v2, _ = clicks_to_voxels({"space": "world", "positive": [world]}, image.meta["original_affine"], image.affine, image.shape[1:])
    assert torch.equal(v1, v2) and l1.tolist() == [1]
    i, j, k = v1[0].long().tolist()
    assert (i, j, k) != (5, 7, 9), "the test needs a reorientation that moves the voxel"
    assert image[0, i, j, k] == image[0].max(), "the click must hit the marker after reorientation"
    with pytest.raises(ValueError, match="outside the image"):
        clicks_to_voxels({"space": "voxel", "positive": [[20, 0, 0]]}, image.meta["original_affine"], image.affine, image.shape[1:])


def test_mask_statistics_volume_and_components():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # 8 voxels
    mask[10:12, 10:12, 10:13] = 1  # 12 voxels
    mask[5, 5, 5] = 1  # touches nothing: third component
    aff = np.diag([2.0, 1.5, 3.0, 1.0])  # 9 mm^3 per voxel
    s = mask_statistics(mask, aff, confidence=np.full(mask.shape, 0.25))
    assert s["components"] == 3 and s["voxels"] == 21
    assert s["volume_ml"] == pytest.approx(21 * 9.0 / 1000.0)
    assert s["mean_confidence"] == pytest.approx(0.25)
    diag = np.zeros_like(mask)
    diag[0, 0, 0] = diag[1, 1, 1] = 1  # corner neighbours: one 26-connected component
    assert mask_statistics(diag, aff)["components"] == 1


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.nii.gz"
    write_nifti_atomic(np.zeros((4, 4, 4)), np.eye(4), target)
    with pytest.raises(FileExistsError):
        write_nifti_atomic(np.zeros((4, 4, 4)), np.eye(4), target)
    import sat3d.atomic

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sat3d.atomic.nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_nifti_atomic(np.ones((4, 4, 4)), np.eye(4), tmp_path / "y.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]


def test_atomic_write_partial_bytes_leave_no_target(tmp_path):
    """Catches a non-atomic write: a writer that writes part of the file and then fails leaves no target
    (and no temporary file), and an existing target keeps its old content."""
    from sat3d.atomic import atomic_path

    target = tmp_path / "z.nii.gz"
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"\x1f\x8b partial")
            raise OSError("disk full after a few bytes")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_bytes(b"new but partial")
            raise OSError("disk full")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_metadata_is_valid_against_the_schema(tmp_path):
    schema = SHARED / "schema" / "meta_schema_20240725.json"
    if not schema.is_file():
        pytest.skip(f"schema not found at {schema}")
    local = tmp_path / "schema.json"
    shutil.copy(schema, local)
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(local))
    broken = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(local))


def test_verify_net_in_out_runs_on_the_inference_network(tmp_path):
    """MONAI's own check of the network against metadata.json: input 1 x 64^3 float32, output ``pred`` of
    1 channel (the tumour logits) float32; a metadata claiming 2 output channels must fail it."""
    from monai.bundle import verify_net_in_out

    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == len(meta["network_data_format"]["outputs"]["pred"]["channel_def"])
    args = dict(net_id="network_def", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                config_file=str(BUNDLE / "configs" / "inference.json"), device="cpu", p=1, n=1, any=1,
                bundle_root=str(BUNDLE), require_weights=False)
    verify_net_in_out(**args)
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 2
    (tmp_path / "wrong.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(**{**args, "meta_file": str(tmp_path / "wrong.json")})


def test_missing_weights_give_a_clear_message(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img, _, aff = make_sphere_volume()
    _save(d / "a.nii.gz", img, aff)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--dataset_dir", str(d), "--output_dir", str(tmp_path / "o"), "--ckpt_path", str(tmp_path / "none.pt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode != 0
    assert f"no SAT3D weights at {tmp_path / 'none.pt'}" in proc.stderr + proc.stdout
    assert "python -m sat3d.convert" in proc.stderr + proc.stdout, "the message must name the way to the authors' weights"
    assert not (tmp_path / "o").exists(), "a run that stops for missing weights leaves no (empty) output folder behind"


def test_demo_data_and_clicks_file_run_end_to_end(tmp_path):
    demo = tmp_path / "sample_data"
    subprocess.run([sys.executable, str(BUNDLE / "scripts" / "make_demo_data.py"), str(demo)], check=True, capture_output=True)
    clicks = json.loads((demo / "clicks.json").read_text())
    (i, j, k), = clicks["phantom_ct.nii.gz"]["positive"]
    src = nib.load(str(demo / "phantom_ct.nii.gz"))
    img, lesion, _, _ = demo_data_module().make_phantom()
    assert lesion[i, j, k] == 1, "the demo click must lie in the lesion"
    assert np.allclose(src.get_fdata(), img, atol=0.01), "the written phantom is make_phantom's"
    again = subprocess.run([sys.executable, str(BUNDLE / "scripts" / "make_demo_data.py"), str(demo)], capture_output=True, text=True)
    assert "exists; kept" in again.stdout
    out = tmp_path / "output"
    proc = run_inference(demo, out, "--clicks_file", str(demo / "clicks.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = nib.load(str(out / "phantom_ct_mask.nii.gz"))
    assert mask.shape == src.shape and np.asarray(mask.dataobj)[i, j, k] == 1


def test_clicks_reach_the_network_in_a_bundle_run(tmp_path):
    """Catches a bundle path where the network never sees the clicks: with click_radius 0 (no forced voxels) a
    clicked run must differ from an automatic one."""
    d = tmp_path / "in"
    d.mkdir()
    img, _, aff = make_sphere_volume()
    _save(d / "a.nii.gz", img, aff)
    cf = tmp_path / "clicks.json"
    cf.write_text(json.dumps({"a.nii.gz": {"space": "voxel", "positive": [[20, 18, 22]]}}))
    auto, clicked = tmp_path / "auto", tmp_path / "clicked"
    for out, extra in ((auto, ()), (clicked, ("--clicks_file", str(cf), "--click_radius", "0"))):
        res = run_inference(d, out, *extra)
        assert res.returncode == 0, res.stderr[-2000:]
    a = nib.load(str(auto / "a_confidence.nii.gz")).get_fdata()
    c = nib.load(str(clicked / "a_confidence.nii.gz")).get_fdata()
    assert a.shape == c.shape and not np.allclose(a, c, atol=1e-4), "the click changed nothing: the network did not see it"


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_monai_workflow_properties_and_standard_run_ids(tmp_path, config):
    """MONAI's ConfigWorkflow drives the bundle: initialize, the required inference properties (bundle_root,
    device, dataset_dir, dataset, evaluator, network_def, inferer), the standard 'run' id, and the README's
    run id ('inference' / 'evaluate') resolving to the same steps."""
    from monai.bundle import ConfigWorkflow

    img, lab, aff = make_sphere_volume()
    _save(tmp_path / "a.nii.gz", img, aff)
    _save(tmp_path / "a_seg.nii.gz", lab.astype(np.uint8), aff)
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]}))
    wf = ConfigWorkflow(config_file=str(BUNDLE / "configs" / config), meta_file=str(BUNDLE / "configs" / "metadata.json"),
                        workflow_type="infer", bundle_root=str(BUNDLE), dataset_dir=str(tmp_path), output_dir=str(tmp_path / "o"))
    wf.initialize()
    assert wf.check_properties() == []
    legacy = config.split(".")[0]
    assert wf.parser[legacy] == "@run" and isinstance(wf.parser["run"], list)


def test_postprocessing_tells_the_inferer_when_the_answer_is_complete(tmp_path):
    """The window prefetch starts when the bundle's postprocessing ends: its last step must call answered()
    on the very inferer that MONAI Label and folder inference call."""
    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / "inference.json"))
    cp.update({"bundle_root": str(BUNDLE), "require_weights": False})
    inferer = cp.get_parsed_content("inferer")
    assert inferer.prefetch_windows > 0 and inferer.cache_size > 0
    last = cp.get_parsed_content("postprocessing").transforms[-1]
    inferer._answered.clear()
    out = last({"pred": torch.zeros(1, 2, 2, 2)})
    assert inferer._answered.is_set() and out["pred"].shape == (1, 2, 2, 2)
    cp.get_parsed_content("evaluator")
    assert inferer.prefetch_windows == 0, "a folder run never comes back to an image: no prefetch"


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_clicked_windows_only_reaches_the_sessions(tmp_path, config):
    """Catches a knob that a config accepts but never uses: '--clicked_windows_only true' (a string on the
    command line) must reach the session that folder inference and the evaluation build."""
    from monai.bundle import ConfigParser

    img, lab, aff = make_sphere_volume()
    _save(tmp_path / "a.nii.gz", img, aff)
    _save(tmp_path / "a_seg.nii.gz", lab.astype(np.uint8), aff)
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]}))
    for value, expect in (("true", True), ("false", False)):
        cp = ConfigParser()
        cp.read_config(str(BUNDLE / "configs" / config))
        cp.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "o"),
                   "require_weights": False, "clicked_windows_only": value})
        inferer = cp.get_parsed_content("inferer")
        assert inferer.clicked_windows_only is expect
        if config == "evaluate.json":
            assert cp.get_parsed_content("evaluator")._session().clicked_windows_only is expect


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_training_evaluation_and_inference_preprocess_a_volume_identically(tmp_path, dtype):
    """Catches drift between the four load/orient/resample/normalise chains (train, validation, evaluate,
    inference): an oblique, anisotropic CT-like volume must come out bit-identical (image and affine) from the
    deterministic part of each."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    rng = np.random.default_rng(0)
    img = np.full((40, 36, 22), -1000.0, np.float32)
    img[8:32, 6:30, 4:18] = rng.normal(40, 15, (24, 24, 14))
    aff = np.array([[-0.9, 0.1, 0, 20.0], [0.05, 1.1, 0, -5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
    lab = (img > 60).astype(np.uint8)
    _save(tmp_path / "ct.nii.gz", img.astype(dtype), aff)
    _save(tmp_path / "ct_seg.nii.gz", lab, aff)
    item = {"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "ct_seg.nii.gz")}
    outputs = {}
    for config, key in (("train.json", "train#preprocessing"), ("train.json", "validate#preprocessing"),
                        ("evaluate.json", "preprocessing"), ("inference.json", "preprocessing")):
        cp = ConfigParser()
        cp.read_config(str(BUNDLE / "configs" / config))
        cp.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "o"),
                   "require_weights": False})
        chain = cp.get_parsed_content(key).transforms
        shared = []
        for t in chain:  # the model's preprocessing: up to the first transform that is about the label or random
            if type(t).__name__ in ("SelectTargetd", "RandSelectTargetd", "ClicksFromRequestd", "EnsureTyped"):
                break
            shared.append(t)
        out = Compose(shared)(dict(item) if config != "inference.json" else {"image": item["image"]})["image"]
        outputs[f"{config}:{key}"] = (out.as_tensor().float(), np.asarray(out.affine))
    names = list(outputs)
    assert len(names) == 4
    ref_img, ref_aff = outputs[names[0]]
    for n in names[1:]:
        assert outputs[n][0].shape == ref_img.shape, n
        assert torch.equal(outputs[n][0], ref_img), f"{n} preprocesses differently from {names[0]}"
        np.testing.assert_allclose(outputs[n][1], ref_aff, err_msg=n)


def test_the_loading_chain_is_defined_once():
    """The four preprocessing chains start with the one chain of sat3d.transforms.loading_transforms, fed by each
    config's own spacing and intensity knobs, and MONAI Label still finds LoadImaged in the flat list."""
    from monai.bundle import ConfigParser
    from monai.transforms import LoadImaged

    for config, sec in (("train.json", "train#"), ("train.json", "validate#"), ("evaluate.json", ""), ("inference.json", "")):
        cp = ConfigParser()
        cp.read_config(str(BUNDLE / "configs" / config))
        loading = cp[f"{sec}loading"]
        assert loading["_target_"] == "sat3d.transforms.loading_transforms", (config, sec)
        assert (loading["spacing"], loading["intensity"]) == ("@spacing", "@intensity"), (config, sec)
        assert cp[f"{sec}preprocessing"]["transforms"].replace("::", "#").startswith(f"$@{sec}loading + "), (config, sec)
        if config == "inference.json":
            cp.update({"bundle_root": str(BUNDLE), "require_weights": False})
            chain = cp.get_parsed_content("preprocessing").transforms
            assert isinstance(chain[0], LoadImaged) and not any(hasattr(t, "transforms") for t in chain)


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_default_weights_follow_bundle_root(config, tmp_path):
    """MONAI's convention: bundle_root defaults to the current folder (not guessed from the command line) and the
    default weights are <bundle_root>/models/model.pt, so '--bundle_root bundle' (the README) finds the bundle's."""
    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / config))
    assert cp["bundle_root"] == "."
    cp.update({"bundle_root": str(tmp_path)})
    assert cp.get_parsed_content("ckpt_path") == str(tmp_path) + "/models/model.pt"
