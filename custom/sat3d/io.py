"""Input checks, clicks files, result statistics and atomic NIfTI writing for the bundle workflows."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import NibabelWriter
from scipy import ndimage

__all__ = [
    "NIFTI_SUFFIXES",
    "list_volumes",
    "case_name",
    "load_clicks_file",
    "load_click_entry",
    "clicks_to_voxels",
    "mask_statistics",
    "atomic_path",
    "write_nifti_atomic",
    "write_text_atomic",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_name(path: str | os.PathLike) -> str:
    """File name without the NIfTI suffix (``a/b/case1.nii.gz`` -> ``case1``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_volumes(folder: str | os.PathLike) -> list[Path]:
    """Sorted NIfTI files (``*.nii``, ``*.nii.gz``) directly in ``folder``.

    Raises:
        ValueError: if the folder does not exist or holds no NIfTI file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"input folder {root} does not exist or is not a folder.")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise ValueError(f"input folder {root} contains no NIfTI file (*.nii, *.nii.gz).")
    return files


def _point_list(value: Any, where: str) -> list[list[float]]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of [x, y, z] points, got {type(value).__name__}.")
    points = []
    for p in value:
        if (
            not isinstance(p, (list, tuple))
            or len(p) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        ):
            raise ValueError(f"{where}: {p!r} is not a point of three finite numbers.")
        points.append([float(v) for v in p])
    return points


def load_clicks_file(path: str | os.PathLike | None, lenient: bool = False) -> dict[str, dict[str, Any]]:
    """Read and validate a clicks file.

    Format (JSON), keyed by input file name (``case1.nii.gz``) or case name (``case1``)::

        {"case1.nii.gz": {"space": "voxel", "positive": [[120, 88, 40]], "negative": [[100, 80, 41]]},
         "case2.nii.gz": {"space": "world", "positive": [[-12.5, 30.0, 101.2]]}}

    ``voxel`` coordinates are 0-based array indices (i, j, k) of the file as stored on disk; ``world``
    coordinates are millimetres in the NIfTI's RAS world frame (what the file's affine maps to, e.g. the
    RAS coordinates 3D Slicer shows).

    Args:
        path: the JSON file, or ``None``.
        lenient: a malformed entry becomes ``{"error": message}`` instead of raising, so that only that
            image fails and the others are processed.

    Returns:
        ``{name: {"space": str, "positive": [[...]], "negative": [[...]]}}`` (empty without a file).

    Raises:
        ValueError: naming the file and the problem when the file is missing, not JSON, not an object, or
            (unless ``lenient``) has a malformed entry.
    """
    if path is None or str(path) in ("", "None", "none"):
        return {}
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"clicks file {p} does not exist.")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"clicks file {p} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"clicks file {p} must hold a JSON object keyed by image file name.")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in data.items():
        try:
            out[name] = load_click_entry(entry, f"clicks file {p}, entry {name!r}")
        except ValueError as e:
            if not lenient:
                raise
            out[name] = {"error": str(e)}
    return out


def load_click_entry(entry: Any, where: str) -> dict[str, Any]:
    """Validate one image's clicks ``{"space", "positive", "negative"}``; ``where`` names it in errors."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object with 'space', 'positive' and/or 'negative'.")
    unknown = set(entry) - {"space", "positive", "negative"}
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}.")
    space = entry.get("space", "voxel")
    if space not in ("voxel", "world"):
        raise ValueError(f"{where}: 'space' must be 'voxel' or 'world', got {space!r}.")
    return {
        "space": space,
        "positive": _point_list(entry.get("positive", []), f"{where}, 'positive'"),
        "negative": _point_list(entry.get("negative", []), f"{where}, 'negative'"),
    }


def clicks_to_voxels(
    clicks: Mapping[str, Any], original_affine: np.ndarray, image_affine: np.ndarray, shape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map one image's clicks into the voxel grid of the preprocessed image.

    Args:
        clicks: one entry of :func:`load_clicks_file`.
        original_affine: ``(4, 4)`` voxel-to-world (RAS mm) affine of the file on disk.
        image_affine: ``(4, 4)`` affine of the preprocessed image (e.g. after reorientation).
        shape: spatial shape of the preprocessed image.

    Returns:
        ``(N, 3)`` voxel coordinates (rounded to the nearest voxel) and ``(N,)`` labels (1 / 0).

    Raises:
        ValueError: if a click lies outside the image.
    """
    pts = [(p, 1) for p in clicks.get("positive", [])] + [(p, 0) for p in clicks.get("negative", [])]
    if not pts:
        return torch.zeros((0, 3)), torch.zeros((0,), dtype=torch.long)
    xyz = np.array([p for p, _ in pts], dtype=np.float64)
    if clicks.get("space", "voxel") == "voxel":
        world = (np.asarray(original_affine, dtype=np.float64) @ np.c_[xyz, np.ones(len(xyz))].T).T[:, :3]
    else:
        world = xyz
    vox = (np.linalg.inv(np.asarray(image_affine, dtype=np.float64)) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    vox = np.rint(vox)
    size = np.asarray(shape)
    outside = ((vox < 0) | (vox > size - 1)).any(axis=1)
    if outside.any():
        bad = [pts[i][0] for i in np.flatnonzero(outside)]
        raise ValueError(f"clicks {bad} ({clicks.get('space', 'voxel')} coordinates) lie outside the image.")
    return torch.as_tensor(vox, dtype=torch.float32), torch.tensor([lab for _, lab in pts], dtype=torch.long)


def mask_statistics(mask: np.ndarray, affine: np.ndarray, confidence: np.ndarray | None = None) -> dict[str, float]:
    """Volume in ml, 26-connected component count and mean confidence inside a binary 3D mask.

    Args:
        mask: ``(X, Y, Z)`` binary mask.
        affine: ``(4, 4)`` voxel-to-world affine in mm.
        confidence: optional ``(X, Y, Z)`` confidence map.
    """
    mask = np.asarray(mask) > 0
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    _, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    stats = {"voxels": int(mask.sum()), "volume_ml": float(mask.sum()) * voxel_ml, "components": int(n)}
    if confidence is not None:
        stats["mean_confidence"] = float(np.asarray(confidence)[mask].mean()) if mask.any() else float("nan")
    return stats


def _tmp_path(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent)
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed to ``target`` in one step.

    A failure (or a kill) while writing leaves no partial ``target`` and removes the temporary file.

    Raises:
        FileExistsError: if ``target`` exists and ``overwrite`` is false.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; not overwriting it (set overwrite to true to replace it).")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_nifti_atomic(array: np.ndarray | torch.Tensor, affine: np.ndarray, target: str | os.PathLike,
                       dtype: Any = np.float32, overwrite: bool = False) -> Path:
    """Write a 3D array as NIfTI through MONAI's ``NibabelWriter``, atomically (see :func:`atomic_path`)."""
    with atomic_path(target, overwrite) as tmp:
        writer = NibabelWriter(output_dtype=dtype)
        writer.set_data_array(torch.as_tensor(np.asarray(array)), channel_dim=None)
        writer.set_metadata({"affine": np.asarray(affine), "original_affine": np.asarray(affine)}, resample=False)
        writer.write(str(tmp), verbose=False)
    return Path(target)


def write_text_atomic(text: str, target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write text to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, overwrite) as tmp:
        tmp.write_text(text)
    return Path(target)
