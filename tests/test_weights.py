"""Weights files carry their configuration; runs that contradict it are refused with a clear message."""

from __future__ import annotations

import pytest
import torch
from conftest import EXPERIMENTAL_WEIGHTS
from sat3d import build_sat3d
from sat3d.weights import DEFAULT_CONFIG, check_config, load_weights, read_config, read_weights, save_weights


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_sat3d("sat3d_tiny")


def test_round_trip_fp16_storage_loaded_as_fp32(tiny, tmp_path):
    path = save_weights(tiny, tmp_path / "m.pt", {"preset": "sat3d_tiny", "roi_size": [32, 32, 32], "training": "unit test"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "sat3d-weights" and raw["state_dict"]["mask_decoder.mask_token.weight"].dtype == torch.float16
    assert not [k for k in raw["state_dict"] if k.endswith("relative_position_index")], "derived buffers are not stored"
    state, cfg = read_weights(path)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    ref = tiny.state_dict()
    assert set(state) == {k for k in ref if not k.endswith("relative_position_index")}
    assert all(torch.allclose(state[k], ref[k], atol=2e-3, rtol=1e-3) for k in state)
    assert cfg["preset"] == "sat3d_tiny" and cfg["roi_size"] == [32, 32, 32] and cfg["training"] == "unit test"
    assert cfg["spacing"] == DEFAULT_CONFIG["spacing"] and "version" in cfg
    net = build_sat3d("sat3d_tiny")
    assert load_weights(net, path, expect={"roi_size": [32, 32, 32], "preset": "sat3d_tiny"})["preset"] == "sat3d_tiny"
    assert torch.equal(net.state_dict()["mask_decoder.mask_token.weight"], state["mask_decoder.mask_token.weight"])
    own = build_sat3d("sat3d_tiny").state_dict()
    assert all(torch.equal(net.state_dict()[k], own[k]) for k in own if k.endswith("relative_position_index"))


def test_average_is_the_parameter_mean_and_refuses_other_networks(tiny, tmp_path):
    from sat3d.weights import average_weights, main

    cfg = {"preset": "sat3d_tiny", "roi_size": [32, 32, 32], "training": "a"}
    a = save_weights(tiny, tmp_path / "a.pt", cfg, half=False)
    torch.manual_seed(1)
    other = build_sat3d("sat3d_tiny")
    b = save_weights(other, tmp_path / "b.pt", {**cfg, "training": "b"}, half=False)
    state, config = average_weights([a, b])
    ra, rb = tiny.state_dict(), other.state_dict()
    key = "mask_decoder.mask_token.weight"
    assert not torch.equal(ra[key], rb[key])
    assert torch.allclose(state[key], (ra[key] + rb[key]) / 2)
    assert config["training"] == "a"
    main(["average", str(tmp_path / "m.pt"), str(a), str(b), "--config", '{"training": "mean of a and b"}'])
    avg, cfg_out = read_weights(tmp_path / "m.pt")
    assert cfg_out["training"] == "mean of a and b" and cfg_out["preset"] == "sat3d_tiny"
    assert torch.allclose(avg[key], (ra[key] + rb[key]) / 2, atol=2e-3)  # stored as float16
    c = save_weights(build_sat3d("sat3d_tiny", overrides={"roi_size": [64, 64, 64]}), tmp_path / "c.pt", {**cfg, "roi_size": [64, 64, 64]})
    with pytest.raises(ValueError, match="c.pt"):
        average_weights([a, c])
    with pytest.raises(ValueError, match="at least two"):
        average_weights([a])


def test_contradicting_settings_are_refused(tiny, tmp_path):
    path = save_weights(tiny, tmp_path / "m.pt", {"preset": "sat3d_tiny", "roi_size": [32, 32, 32]})
    with pytest.raises(ValueError, match=r"roi_size \[64, 64, 64\] \(weights: \[32, 32, 32\]\)"):
        load_weights(build_sat3d("sat3d_tiny"), path, expect={"roi_size": [64, 64, 64]})
    with pytest.raises(ValueError, match="spacing"):
        check_config(read_config(path), str(path), spacing=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="intensity"):
        check_config(read_config(path), str(path), intensity={"name": "foreground_zscore", "clip": 3.0})
    check_config(read_config(path), str(path), roi_size=(32, 32, 32), spacing=[1.5, 1.5, 1.5], mask_threshold=0.5)


def test_bad_files_are_named(tiny, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt is not a readable SAT3D weights file"):
        load_weights(tiny, text)
    with pytest.raises(ValueError, match="is a folder"):
        load_weights(tiny, tmp_path)
    with pytest.raises(FileNotFoundError, match="no SAT3D weights") as missing:
        load_weights(tiny, tmp_path / "absent.pt")
    # the message points to the experimental weights that are actually kept
    assert f"bundle/models/experimental/{EXPERIMENTAL_WEIGHTS.name}" in str(missing.value) and EXPERIMENTAL_WEIGHTS.is_file()
    state = dict(tiny.state_dict())
    state.pop("critic.head.weight")
    torch.save(state, tmp_path / "truncated.pt")
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. \['critic\.head\.weight'\]\)"):
        load_weights(build_sat3d("sat3d_tiny"), tmp_path / "truncated.pt")
    base = build_sat3d("sat3d_base")
    with pytest.raises(ValueError, match="does not fit this network"):
        load_weights(base, save_weights(tiny, tmp_path / "tiny.pt", {"preset": "sat3d_tiny"}))


def test_session_from_weights_uses_their_network_and_thresholds(tiny, tmp_path):
    from sat3d.session import InteractiveSession

    path = save_weights(tiny, tmp_path / "m.pt", {"preset": "sat3d_tiny", "roi_size": [32, 32, 32], "mask_threshold": 0.4})
    s = InteractiveSession.from_weights(str(path))
    assert s.roi_size == (32, 32, 32) and s.threshold == 0.4 and s.config["preset"] == "sat3d_tiny"
    ref = tiny.state_dict()
    assert all(torch.allclose(s.network.state_dict()[k], ref[k], atol=2e-3, rtol=1e-3) for k in ref)


def test_training_evaluation_and_inference_preprocess_identically(tmp_path):
    """If training and inference drift apart, accuracy drops with no error: the load/orient/resample/normalise
    chains of train.json (training and validation), evaluate.json and inference.json must give the same image."""
    import nibabel as nib
    import numpy as np
    from conftest import BUNDLE, make_sphere_volume
    from monai.bundle import ConfigParser

    img, lab, aff = make_sphere_volume(shape=(30, 26, 20))
    aff = aff.copy()
    aff[:2] *= -1
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "i.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "l.nii.gz"))
    item = {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}

    def chain(config: str, key: str):
        cp = ConfigParser()
        cp.read_config(str(BUNDLE / "configs" / config))
        tf = cp.get_parsed_content(key)
        names = [type(t).__name__ for t in tf.transforms]
        end = names.index("IntensityNormalized") + 1
        data = dict(item) if config != "inference.json" else {"image": item["image"]}
        for t in tf.transforms[:end]:
            data = t(data)
        return data["image"], names[:end]

    ref, ref_names = chain("inference.json", "preprocessing")
    assert ref_names[-2:] == ["Spacingd", "IntensityNormalized"]
    for config, key in (("evaluate.json", "preprocessing"), ("train.json", "train#preprocessing"), ("train.json", "validate#preprocessing")):
        out, names = chain(config, key)
        assert names == ref_names, (config, key, names)
        assert out.shape == ref.shape and torch.equal(out.as_tensor(), ref.as_tensor()), (config, key)
        assert np.allclose(np.asarray(out.affine), np.asarray(ref.affine)), (config, key)


def test_fine_tuning_may_change_the_window_but_not_the_preprocessing(tiny, tmp_path):
    """A training run at another window (the GPU's 128^3 after the CPU's 64^3) starts from the weights; a run
    whose spacing contradicts them is refused before it trains."""
    from ignite.engine import Engine
    from sat3d.handlers import TrainingStart

    path = save_weights(tiny, tmp_path / "m.pt", {"preset": "sat3d_tiny", "roi_size": [32, 32, 32]})
    run = {"preset": "sat3d_tiny", "roi_size": [64, 64, 64], "spacing": [1.5, 1.5, 1.5]}
    net = build_sat3d("sat3d_tiny", overrides={"roi_size": [64, 64, 64]})
    key = "mask_decoder.mask_token.weight"
    assert not torch.equal(net.state_dict()[key], tiny.state_dict()[key].float())
    TrainingStart(net, init_weights=str(path), model_config=run)(Engine(lambda e, b: None))
    assert torch.allclose(net.state_dict()[key], tiny.state_dict()[key], atol=2e-3)
    with pytest.raises(ValueError, match="spacing"):
        TrainingStart(net, init_weights=str(path), model_config={**run, "spacing": [1.0, 1.0, 1.0]})(Engine(lambda e, b: None))


@pytest.mark.parametrize("name", [EXPERIMENTAL_WEIGHTS.name])
def test_experimental_weights_load_with_their_configuration(name):
    """The CPU attempts' weights are kept for fine-tuning: they load strictly, are small, and say what they are."""
    from conftest import BUNDLE
    from sat3d.session import InteractiveSession

    path = BUNDLE / "models" / "experimental" / name
    assert path.is_file() and path.stat().st_size <= 25 * 1024 * 1024
    cfg = read_config(path)
    assert cfg["status"] == "experimental" and cfg["training"].startswith("EXPERIMENTAL")
    assert cfg["preset"] in ("sat3d_base", "sat3d_detail", "sat3d_geodesic") and cfg["roi_size"] == [64, 64, 64] and cfg["spacing"] == [1.5, 1.5, 1.5]
    assert InteractiveSession.from_weights(str(path)).roi_size == (64, 64, 64)


def test_thresholds_have_one_definition():
    """T and the mask threshold are defined once (sat3d.constants); every default and the training config
    agree with it, and the weights' configuration carries both."""
    import inspect
    import json

    from conftest import BUNDLE
    from sat3d import SAT3D, build_sat3d
    from sat3d.constants import CONFIDENCE_THRESHOLD, MASK_THRESHOLD
    from sat3d.engine import SAT3DTrainer
    from sat3d.evaluation import InteractiveEvaluation
    from sat3d.losses import GeneratorLoss
    from sat3d.session import InteractiveSession
    from sat3d.weights import DEFAULT_CONFIG

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(build_sat3d, "confidence_threshold") == default(SAT3D.__init__, "confidence_threshold") == CONFIDENCE_THRESHOLD
    assert default(GeneratorLoss.__init__, "threshold") == CONFIDENCE_THRESHOLD
    for fn, name in ((GeneratorLoss.__init__, "mask_threshold"), (SAT3DTrainer.__init__, "mask_threshold"),
                     (InteractiveSession.__init__, "threshold"), (InteractiveEvaluation.__init__, "threshold")):
        assert default(fn, name) == MASK_THRESHOLD, fn.__qualname__
    assert DEFAULT_CONFIG["confidence_threshold"] == CONFIDENCE_THRESHOLD and DEFAULT_CONFIG["mask_threshold"] == MASK_THRESHOLD
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert train["confidence_threshold"] == CONFIDENCE_THRESHOLD and train["mask_threshold"] == MASK_THRESHOLD
    assert "@mask_threshold" in json.dumps(train["validate"]["postprocessing"]), "validation must threshold at the config's value"
    assert build_sat3d("sat3d_tiny").confidence_threshold == CONFIDENCE_THRESHOLD
