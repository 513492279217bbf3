"""Folder inference: segment every NIfTI in a folder, one file at a time, without stopping on bad files."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import (
    case_name,
    list_volumes,
    load_clicks_file,
    mask_statistics,
    write_nifti_atomic,
    write_text_atomic,
)
from .transforms import CLICKS_META_KEY

__all__ = ["FolderInference", "load_weights"]

logger = logging.getLogger("sat3d.inference")

RESULT_FIELDS = ["file", "status", "volume_ml", "components", "voxels", "mean_confidence", "clicks", "mask",
                 "confidence", "error"]


def as_bool(value: Any) -> bool:
    """Interpret a config or command-line value (``--overwrite false`` arrives as the string ``"false"``)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "1", "yes", "on"):
            return True
        if v in ("false", "0", "no", "off", "none", ""):
            return False
        raise ValueError(f"expected true or false, got {value!r}.")
    return bool(value)


def load_weights(network: torch.nn.Module, ckpt_path: str | Path | None, require: bool = True,
                 expect: dict[str, Any] | None = None) -> bool:
    """Load SAT3D weights into ``network``; see :func:`sat3d.weights.load_weights`. Returns whether weights were loaded."""
    from .weights import load_weights as _load

    path = Path(ckpt_path) if ckpt_path not in (None, "", "None", "none") else None
    _load(network, ckpt_path, require, expect)
    return path is not None and path.exists()


def _root_cause(e: BaseException) -> str:
    """Message of the innermost cause (MONAI wraps transform errors in 'applying transform ...')."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split())
    if len(text) > 500:
        text = text[:500] + " ..."
    if isinstance(e, (ValueError, RuntimeError)) and text:
        return text
    return f"{type(e).__name__}: {text}"


class FolderInference:
    """Segment every NIfTI volume in ``dataset_dir`` and write masks, confidence maps and a results table.

    For each input ``<case>.nii[.gz]`` it writes ``<case>_mask.nii.gz`` (uint8) and
    ``<case>_confidence.nii.gz`` (float32) with the input's geometry, and one row (volume in ml, connected
    components, mean confidence, status) to ``results-<time>.json`` and ``.csv``.  A file that fails
    (unreadable, 2D, NaN, clicks outside, ...) is reported with its name and the reason, and the others are
    still processed.  Existing outputs are skipped unless ``overwrite``.

    Args:
        dataset_dir: folder with the input volumes.
        output_dir: folder for the outputs (created).
        network: the SAT3D network.
        preprocessing: dict transform on ``{"image": path}`` (load, validate, orient, normalise).
        inferer: :class:`sat3d.inferer.SAT3DInferer`.
        postprocessing: dict transform on ``{"image", "pred"}`` that inverts the preprocessing and splits
            ``pred`` into mask and ``confidence``.
        ckpt_path: weights file; see :func:`load_weights`.
        require_weights: fail when ``ckpt_path`` is missing (false only for tests).
        clicks_file: optional JSON clicks file, see :func:`sat3d.io.load_clicks_file`.
        device: device of the network.
        overwrite: replace existing outputs.
        fail_on_error: raise at the end if any file failed (after processing all of them).
        settings: the run's model settings (roi_size, spacing, ...), checked against the configuration
            stored with the weights (:func:`sat3d.weights.check_config`).
    """

    def __init__(
        self,
        dataset_dir: str,
        output_dir: str,
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        ckpt_path: str | None = None,
        require_weights: bool = True,
        clicks_file: str | None = None,
        device: str | torch.device = "cpu",
        overwrite: bool = False,
        fail_on_error: bool = True,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.ckpt_path = ckpt_path
        self.require_weights = as_bool(require_weights)
        self.clicks_file = clicks_file
        self.device = torch.device(device)
        self.overwrite = as_bool(overwrite)
        self.fail_on_error = as_bool(fail_on_error)
        self.settings = dict(settings or {})
        self.results: list[dict[str, Any]] = []

    def _clicks_for(self, clicks: dict, path: Path) -> dict | None:
        return clicks.get(path.name, clicks.get(case_name(path)))

    def process(self, path: Path, clicks: dict | None) -> dict[str, Any]:
        """Segment one file and write its outputs; returns its results row."""
        case = case_name(path)
        mask_path = self.output_dir / f"{case}_mask.nii.gz"
        conf_path = self.output_dir / f"{case}_confidence.nii.gz"
        row: dict[str, Any] = {"file": path.name, "mask": mask_path.name, "confidence": conf_path.name}
        existing = [p.name for p in (mask_path, conf_path) if p.exists()]
        if existing and not self.overwrite:
            logger.warning("%s: outputs %s exist; skipped (set overwrite to true to replace them).", path.name, existing)
            return {**row, "status": "skipped: outputs exist"}
        request: dict[str, Any] = {"image": str(path)}
        if clicks and "error" in clicks:
            raise ValueError(f"{path.name}: {clicks['error']}")
        if clicks:
            request.update(foreground=clicks["positive"], background=clicks["negative"], click_space=clicks["space"])
        data = self.preprocessing(request)
        image = data["image"]
        given = image.meta.get(CLICKS_META_KEY)
        if given:
            row["clicks"] = int(len(given["labels"]))
        elif clicks:
            raise ValueError(f"{path.name}: clicks were given but the preprocessing has no ClicksFromRequestd to map them.")
        with torch.no_grad():
            pred = self.inferer(image.unsqueeze(0).to(self.device), self.network)
        data["pred"] = pred[0].cpu()
        data = self.postprocessing(data)
        mask = data["pred"][0].numpy().astype(np.uint8)
        conf = data["confidence"][0].numpy().astype(np.float32)
        affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
        if mask.shape != tuple(image.meta["spatial_shape"]):
            raise RuntimeError(f"{path.name}: inverted mask {mask.shape} differs from the input {image.meta['spatial_shape']}.")
        write_nifti_atomic(mask, affine, mask_path, dtype=np.uint8, overwrite=self.overwrite)
        write_nifti_atomic(conf, affine, conf_path, dtype=np.float32, overwrite=self.overwrite)
        return {**row, "status": "ok", **mask_statistics(mask, affine, conf)}

    def run(self) -> list[dict[str, Any]]:
        """Process the whole folder; returns the result rows (also written as JSON and CSV)."""
        files = list_volumes(self.dataset_dir)
        clicks = load_clicks_file(self.clicks_file, lenient=True)
        known = {p.name for p in files} | {case_name(p) for p in files}
        unknown = sorted(set(clicks) - known)
        if unknown:
            logger.warning("clicks file %s names files not in %s: %s", self.clicks_file, self.dataset_dir, unknown)
        load_weights(self.network, self.ckpt_path, self.require_weights, self.settings)
        self.network.to(self.device).eval()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.results = []
        for i, path in enumerate(files, 1):
            t0 = time.perf_counter()
            try:
                row = self.process(path, self._clicks_for(clicks, path))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
                reason = _root_cause(e)
                msg = reason if reason.startswith(path.name) else f"{path.name}: {reason}"
                logger.error("FAILED %s", msg)
                row = {"file": path.name, "status": "error", "error": msg}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            logger.info("[%d/%d] %s: %s", i, len(files), path.name, row["status"])
            self.results.append(row)
        self._write_results()
        failed = [r for r in self.results if r["status"] == "error"]
        if failed and self.fail_on_error:
            lines = "\n".join(f"  {r['error']}" for r in failed)
            raise RuntimeError(f"{len(failed)} of {len(files)} files failed (the others were written):\n{lines}")
        return self.results

    def _write_results(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.output_dir / f"results-{stamp}"
        n = 1
        while base.with_suffix(".json").exists() or base.with_suffix(".csv").exists():
            base = self.output_dir / f"results-{stamp}-{n}"
            n += 1
        write_text_atomic(json.dumps(self.results, indent=2), base.with_suffix(".json"))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS + ["seconds"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.results)
        write_text_atomic(buf.getvalue(), base.with_suffix(".csv"))
        logger.info("results: %s(.json, .csv)", base)
