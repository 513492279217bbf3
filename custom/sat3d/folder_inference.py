"""Folder inference: segment every NIfTI in a folder, one file at a time, without stopping on bad files."""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
from monai.data import MetaTensor

from .atomic import remove_stale_temporaries, write_nifti_atomic, write_text_atomic
from .bundle_utils import flag
from .clicks import load_clicks_file
from .inferer import PREDICTED_IOU_KEY
from .measures import mask_statistics
from .transforms import CLICKS_META_KEY
from .volumes import case_name, geometry_problem, list_volumes, world_is_defined
from .weights import load_weights

__all__ = ["FolderInference"]

logger = logging.getLogger("sat3d.inference")

RESULT_FIELDS = ["file", "status", "volume_ml", "components", "voxels", "centre_mm", "mean_confidence", "predicted_iou",
                 "clicks", "mask", "confidence", "error"]


def _json_safe(value: Any) -> Any:
    """NaN / infinite floats become ``null`` (valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _root_cause(e: BaseException) -> str:
    """Message of the innermost cause (MONAI wraps transform errors in 'applying transform ...')."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split())
    if len(text) > 500:
        text = text[:500] + " ..."
    if isinstance(e, (ValueError, RuntimeError, FileNotFoundError, FileExistsError)) and text:
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
        ckpt_path: weights file; see :func:`sat3d.weights.load_weights`.
        require_weights: fail when ``ckpt_path`` is missing (false only for tests).
        clicks_file: optional JSON clicks file, see :func:`sat3d.clicks.load_clicks_file`.
        device: device of the network.
        overwrite: replace existing outputs.
        fail_on_error: raise at the end if any file failed (after processing all of them).

    Under ``torchrun`` (``torch.distributed`` initialised, see ``configs/multi_gpu_inference.json``) the
    files are sharded over the processes and rank 0 writes one merged results table.
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
        if getattr(inferer, "prefetch_windows", 0):
            inferer.prefetch_windows = 0  # a folder run never comes back to an image: nothing to prefetch for
        self.postprocessing = postprocessing
        self.ckpt_path = ckpt_path
        self.require_weights = flag(require_weights)
        self.clicks_file = clicks_file
        self.device = torch.device(device)
        self.overwrite = flag(overwrite)
        self.fail_on_error = flag(fail_on_error)
        self.settings = dict(settings or {})
        self.results: list[dict[str, Any]] = []

    def _clicks_for(self, clicks: dict, path: Path) -> dict | None:
        return clicks.get(path.name, clicks.get(case_name(path)))

    def outputs_of(self, path: Path) -> list[Path]:
        """The files that make up one case's result (complete all or none)."""
        case = case_name(path)
        return [self.output_dir / f"{case}_mask.nii.gz", self.output_dir / f"{case}_confidence.nii.gz"]

    def process(self, path: Path, clicks: dict | None) -> dict[str, Any]:
        """Segment one file and write its outputs; returns its results row."""
        mask_path, conf_path = self.outputs_of(path)
        row: dict[str, Any] = {"file": path.name, "mask": mask_path.name, "confidence": conf_path.name}
        existing = [p for p in (mask_path, conf_path) if p.exists()]
        replace = self.overwrite
        if len(existing) == 2 and not self.overwrite:
            logger.warning("%s: outputs exist; skipped (set overwrite to true to replace them).", path.name)
            return {**row, "status": "skipped: outputs exist"}
        if existing and len(existing) < 2:
            logger.warning("%s: incomplete result from an earlier run (%s only); computing it again.", path.name,
                           ", ".join(p.name for p in existing))
            replace = True
        src = nib.load(str(path))  # header only: the data are read by the preprocessing
        problem = geometry_problem(src.header)
        if problem:
            raise ValueError(f"{path.name}: {problem}")
        request: dict[str, Any] = {"image": str(path)}
        if clicks and "error" in clicks:
            raise ValueError(f"{path.name}: {clicks['error']}")
        has_clicks = bool(clicks and (clicks["positive"] or clicks["negative"]))
        if has_clicks:
            if clicks["space"] == "world" and not world_is_defined(src.header):
                raise ValueError(f"{path.name}: the header states no world frame (qform and sform codes 0), so world "
                                 "clicks cannot be placed; give voxel clicks.")
            request.update(foreground=clicks["positive"], background=clicks["negative"], click_space=clicks["space"])
        data = self.preprocessing(request)
        image = data["image"]
        given = image.meta.get(CLICKS_META_KEY)
        if given:
            row["clicks"] = int(len(given["labels"]))
        elif has_clicks:
            raise ValueError(f"{path.name}: clicks were given but the preprocessing has no ClicksFromRequestd to map them.")
        with torch.no_grad():
            pred = self.inferer(image.unsqueeze(0).to(self.device), self.network)
        predicted_iou = pred.meta.get(PREDICTED_IOU_KEY) if isinstance(pred, MetaTensor) else None
        data["pred"] = pred[0].cpu()
        data = self.postprocessing(data)
        mask = data["pred"][0].numpy().astype(np.uint8)
        conf = data["confidence"][0].numpy().astype(np.float32)
        affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
        spatial = tuple(int(v) for v in image.meta["spatial_shape"])
        if mask.shape != spatial:
            raise RuntimeError(f"{path.name}: inverted mask {mask.shape} differs from the input {spatial}.")
        write_nifti_atomic(conf, None, conf_path, dtype=np.float32, overwrite=replace, like=src)
        write_nifti_atomic(mask, None, mask_path, dtype=np.uint8, overwrite=replace, like=src)
        stats = mask_statistics(mask, affine, conf)
        stats["predicted_iou"] = None if predicted_iou is None or not mask.any() else round(float(predicted_iou), 4)
        where = f"centre {stats['centre_mm']} mm" if stats["centre_mm"] else "no tumour found"
        logger.info("%s: %.2f ml in %d component(s), %s, mean confidence %s, predicted IoU %s -> %s", path.name,
                    stats["volume_ml"], stats["components"], where,
                    "-" if stats["mean_confidence"] is None else f"{stats['mean_confidence']:.2f}",
                    "-" if stats["predicted_iou"] is None else f"{stats['predicted_iou']:.2f}", mask_path)
        return {**row, "status": "ok", **stats}

    def _check_output_dir(self) -> None:
        """The output folder can be written, checked without creating it: a run that stops before any file
        (missing weights, say) leaves no empty folder behind.  :meth:`_make_output_dir` creates it."""
        existing = self.output_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent  # the nearest folder that exists: where the new one would be made
        try:
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            probe = tempfile.NamedTemporaryFile(dir=existing, prefix=".sat3d-write-test.", suffix=".tmp")
            probe.close()
        except OSError as e:
            raise self._not_writable(e) from None

    def _make_output_dir(self) -> None:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._not_writable(e) from None

    def _not_writable(self, error: OSError) -> ValueError:
        return ValueError(f"output folder {self.output_dir} is not writable: {error.strerror or error}.")

    def run(self) -> list[dict[str, Any]]:
        """Process the whole folder; returns the result rows (also written as JSON and CSV).

        Raises:
            ValueError: before any file is processed, for a missing input folder, a bad clicks file, an
                unwritable output folder or unusable weights.
            RuntimeError: after all files, if any failed and ``fail_on_error`` (its message lists them).
        """
        rank, world = _rank_world()
        same = self.output_dir.resolve() == self.dataset_dir.resolve() if self.dataset_dir.exists() else False
        files, problems = list_volumes(self.dataset_dir, exclude_outputs=same)
        clicks = load_clicks_file(self.clicks_file, lenient=True)
        known = {p.name for p in files} | {case_name(p) for p in files}
        unknown = sorted(set(clicks) - known)
        if unknown:
            logger.warning("clicks file %s names files not in %s: %s", self.clicks_file, self.dataset_dir, unknown)
        self._check_output_dir()
        if rank == 0:
            for p in remove_stale_temporaries(self.output_dir):
                logger.info("removed %s left by an interrupted run", p.name)
        if world > 1:  # shard the files over the processes (torchrun); rank 0 reports the folder's problems
            dist.barrier()
            all_files = files
            files = files[rank::world]
            problems = problems if rank == 0 else []
            logger.info("rank %d of %d: %d of %d files", rank, world, len(files), len(all_files))
        load_weights(self.network, self.ckpt_path, self.require_weights, self.settings)
        self._make_output_dir()
        self.network.to(self.device).eval()
        self.results = []
        total = len(files) + len(problems)
        for path, msg in problems:
            logger.error("FAILED %s", msg)
            self.results.append({"file": path.name, "status": "error", "error": msg})
        for i, path in enumerate(files, 1):
            t0 = time.perf_counter()
            try:
                row = self.process(path, self._clicks_for(clicks, path))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
                reason = _root_cause(e)
                msg = reason if reason.startswith(path.name) else f"{path.name}: {reason}"
                logger.error("FAILED %s", msg)
                logger.debug("traceback of %s", path.name, exc_info=e)
                row = {"file": path.name, "status": "error", "error": msg}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            if world > 1:
                row["rank"] = rank
            logger.info("[%d/%d] %s: %s", i + len(problems), total, path.name, row["status"])
            self.results.append(row)
        if world > 1:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, self.results)
            self.results = sorted((r for part in gathered for r in part), key=lambda r: r["file"])
            total = len(self.results)
        if rank == 0:
            self._write_results()
        failed = [r for r in self.results if r["status"] == "error"]
        if failed and self.fail_on_error:
            lines = "\n".join(f"  {r['error']}" for r in failed)
            raise RuntimeError(f"{len(failed)} of {total} files failed (the others were written):\n{lines}")
        return self.results

    def input_files(self) -> list[dict[str, str]]:
        """The volumes this run segments, ``[{"image": path}, ...]`` (the bundle's ``dataset``); files that
        cannot be listed (broken links, colliding case names) are reported by :meth:`run`, not here."""
        same = self.output_dir.resolve() == self.dataset_dir.resolve() if self.dataset_dir.exists() else False
        files, _ = list_volumes(self.dataset_dir, exclude_outputs=same)
        return [{"image": str(p)} for p in files]

    def main(self, debug: bool | str = False) -> list[dict[str, Any]]:
        """Entry point of ``monai.bundle run inference``: :meth:`run` with errors as plain log lines.

        A failure before processing prints one ``ERROR`` line and exits with status 2; failed files were
        already named one line each, so the run ends with the summary as its last line and exits with
        status 1 (``fail_on_error``).  ``debug`` re-raises with the traceback.
        """
        debug = flag(debug)
        try:
            return self.run()
        except RuntimeError as e:
            if debug:
                raise
            logger.error("%s", e)
            raise SystemExit(1) from None
        except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
            if debug:
                raise
            logger.error("%s", _root_cause(e))
            raise SystemExit(2) from None

    def _write_results(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.output_dir / f"results-{stamp}"
        n = 1
        while base.with_suffix(".json").exists() or base.with_suffix(".csv").exists():
            base = self.output_dir / f"results-{stamp}-{n}"
            n += 1
        write_text_atomic(json.dumps(_json_safe(self.results), indent=2, allow_nan=False), base.with_suffix(".json"))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS + ["seconds"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.results)
        write_text_atomic(buf.getvalue(), base.with_suffix(".csv"))
        logger.info("results: %s(.json, .csv)", base)
