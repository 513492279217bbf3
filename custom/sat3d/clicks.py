"""The clicks file format and the mapping of clicks (file voxel or world RAS mm) into the model's image."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["load_clicks_file", "load_click_entry", "clicks_to_voxels"]


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
    if p.is_dir():
        raise ValueError(f"clicks file {p} is a folder, not a JSON file.")
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
        xyz = np.floor(xyz + 0.5)  # nearest voxel of the file as stored (halves up), whatever its orientation
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
    seen: dict[tuple, set] = {}
    for v, (_, lab) in zip(vox.astype(int).tolist(), pts):
        seen.setdefault(tuple(v), set()).add(lab)
    conflicts = [v for v, labs in seen.items() if len(labs) > 1]
    if conflicts:
        logging.getLogger("sat3d.inference").warning(
            "positive and negative clicks fall on the same voxel %s; the later (negative) click wins there.", conflicts)
    return torch.as_tensor(vox, dtype=torch.float32), torch.tensor([lab for _, lab in pts], dtype=torch.long)
