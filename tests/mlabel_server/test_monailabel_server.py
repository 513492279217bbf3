"""A real MONAI Label server serving the exported SAT3D bundle, called like 3D Slicer calls it.

Needs monailabel 0.8.5 (and torchvision); skipped when it is not importable. Run it with
``bash tests/mlabel_server/run.sh``, which builds a separate virtual environment for it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

monailabel = pytest.importorskip("monailabel")
requests = pytest.importorskip("requests")

from conftest import make_sphere_volume  # noqa: E402  (tests/conftest.py)
from sat3d import build_sat3d  # noqa: E402
from sat3d.export import export_bundle  # noqa: E402

MODEL = "sat3d_deepedit"  # "deepedit" in the name makes MONAI Label offer a click-based task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlabel")
    studies = root / "studies"
    studies.mkdir()
    img, _, aff = make_sphere_volume()
    nib.save(nib.Nifti1Image(img, aff), str(studies / "sphere.nii.gz"))
    apps = root / "apps"
    subprocess.run([sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", str(apps)],
                   check=True, capture_output=True, text=True)
    app = apps / "monaibundle"
    bundle = export_bundle(app / "model" / MODEL)
    torch.manual_seed(0)
    torch.save(build_sat3d("sat3d_base").state_dict(), bundle / "models" / "model.pt")  # random weights
    port = _free_port()
    log = open(root / "server.log", "w")
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "models", MODEL, "--conf", "zoo_source", "local",
           "--conf", "sam2", "false", "--conf", "skip_trainers", "true"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    info = None
    while time.time() < deadline and proc.poll() is None:
        try:
            r = requests.get(f"{url}/info/", timeout=5)
            if r.status_code == 200:
                info = r.json()
                break
        except requests.RequestException:
            pass
        time.sleep(2)
    if info is None:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("MONAI Label did not start:\n" + (root / "server.log").read_text()[-5000:])
    yield url, info, studies / "sphere.nii.gz", root
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()


def _infer(url: str, model: str, root: Path, name: str, **params) -> nib.Nifti1Image:
    r = requests.post(f"{url}/infer/{model}", params={"image": "sphere", "output": "image"},
                      data={"params": json.dumps(params)}, timeout=600)
    assert r.status_code == 200, r.text[-3000:]
    path = root / f"{name}.nii.gz"
    path.write_bytes(r.content)
    return nib.load(str(path))


def test_models_are_offered(server):
    _, info, _, _ = server
    assert MODEL in info["models"] and f"{MODEL}_seg" in info["models"], list(info["models"])
    assert info["models"][MODEL]["type"] == "deepedit"


def test_auto_and_click_segmentation(server):
    url, _, image_path, root = server
    src = nib.load(str(image_path))
    auto = _infer(url, f"{MODEL}_seg", root, "auto")
    assert auto.shape == src.shape
    np.testing.assert_allclose(auto.affine, src.affine, atol=1e-4)
    click = [20, 18, 22]
    pos = np.asarray(_infer(url, MODEL, root, "pos", foreground=[click], background=[]).dataobj)
    neg = np.asarray(_infer(url, MODEL, root, "neg", foreground=[], background=[click]).dataobj)
    assert pos.shape == src.shape and neg.shape == src.shape
    assert pos[tuple(click)] == 1, "a positive click must add the clicked region"
    # 3D Slicer's MONAI Label plugin sends deepedit clicks keyed by the label name
    slicer = np.asarray(_infer(url, MODEL, root, "slicer", tumour=[click], background=[], label="tumour").dataobj)
    assert slicer[tuple(click)] == 1, "Slicer's label-keyed click must reach the model"
    assert neg[tuple(click)] == 0, "a negative click must remove the clicked region"
    far = [3, 3, 3]
    pos_far = np.asarray(_infer(url, MODEL, root, "pos_far", foreground=[far], background=[]).dataobj)
    assert pos_far[tuple(far)] == 1 and pos_far[2, 3, 3] == 1, "the clicked voxel and its neighbours are tumour"


def test_bad_clicks_get_a_readable_answer(server):
    """A click outside the image or a malformed point reaches the user as a 400 with the reason, not a bare 500."""
    url, _, _, _ = server
    for params, reason in (({"foreground": [[400, 1, 1]], "background": []}, "outside the image"),
                           ({"foreground": [[1, 2]], "background": []}, "three")):
        r = requests.post(f"{url}/infer/{MODEL}", params={"image": "sphere", "output": "image"},
                          data={"params": json.dumps(params)}, timeout=600)
        assert r.status_code == 400, (r.status_code, r.text[-2000:])
        assert reason in r.json()["detail"], r.text
