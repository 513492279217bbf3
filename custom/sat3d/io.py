"""Input checks, clicks files, result statistics and atomic NIfTI writing for the bundle workflows."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import NibabelReader
from monai.utils import ensure_tuple
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
    sfx = _nifti_suffix(name)
    return name[: -len(sfx)] if sfx else name


def _nifti_suffix(name: str) -> str | None:
    low = name.lower()
    return next((name[len(name) - len(sfx):] for sfx in NIFTI_SUFFIXES if low.endswith(sfx)), None)


#: suffixes of the files a folder inference writes (never read back as inputs)
OUTPUT_SUFFIXES = ("_mask.nii.gz", "_confidence.nii.gz")


def list_volumes(folder: str | os.PathLike, exclude_outputs: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """NIfTI files directly in ``folder`` (``.nii`` / ``.nii.gz`` in any letter case), sorted.

    Hidden files (our own temporary files among them) are skipped; with ``exclude_outputs`` (the output
    folder is the input folder) so are ``*_mask.nii.gz`` / ``*_confidence.nii.gz``.

    Returns:
        the volumes, and ``(path, problem)`` for entries that look like inputs but cannot be used
        (broken symbolic links, two files with one case name).

    Raises:
        ValueError: if the folder does not exist or holds no NIfTI file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"input folder {root} does not exist or is not a folder.")
    files, problems = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or _nifti_suffix(p.name) is None:
            continue
        if exclude_outputs and p.name.lower().endswith(OUTPUT_SUFFIXES):
            continue
        if p.is_symlink() and not p.exists():
            problems.append((p, f"{p.name}: broken symbolic link (its target {os.readlink(p)} does not exist)."))
        elif p.is_dir():
            problems.append((p, f"{p.name}: is a folder, not a NIfTI file."))
        else:
            files.append(p)
    by_case: dict[str, list[Path]] = {}
    for p in files:
        by_case.setdefault(case_name(p), []).append(p)
    for case, group in by_case.items():
        if len(group) > 1:
            names = " and ".join(q.name for q in group)
            for q in group:
                problems.append((q, f"{q.name}: {names} share the case name {case!r}, so their outputs would collide; rename one."))
                files.remove(q)
    if not files and not problems:
        raise ValueError(f"input folder {root} contains no NIfTI file (*.nii, *.nii.gz).")
    return files, problems


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


def mask_statistics(mask: np.ndarray, affine: np.ndarray, confidence: np.ndarray | None = None) -> dict[str, float]:
    """Volume in ml, 26-connected component count, centre (world mm) and mean confidence of a binary 3D mask.

    Empty masks give ``None`` for the centre and the mean confidence (JSON ``null``).

    Args:
        mask: ``(X, Y, Z)`` binary mask.
        affine: ``(4, 4)`` voxel-to-world affine in mm.
        confidence: optional ``(X, Y, Z)`` confidence map.
    """
    mask = np.asarray(mask) > 0
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    _, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    stats: dict[str, Any] = {"voxels": int(mask.sum()), "volume_ml": float(mask.sum()) * voxel_ml, "components": int(n)}
    stats["centre_mm"] = (
        [round(float(v), 1) for v in (np.asarray(affine, dtype=np.float64) @ [*np.argwhere(mask).mean(0), 1.0])[:3]]
        if mask.any() else None
    )
    if confidence is not None:
        stats["mean_confidence"] = float(np.asarray(confidence)[mask].mean()) if mask.any() else None
    return stats


def _tmp_path(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent)
    os.close(fd)
    return Path(tmp)


def current_umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: name pattern of our temporary files (``.<target>.<random>.tmp<suffixes>``)
TMP_PATTERN = ".*.tmp*"


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed run left in ``folder`` (only our own ``.<name>.<random>.tmp...``)."""
    removed = []
    for p in Path(folder).glob(TMP_PATTERN):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; results get the user's usual permissions
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_nifti_atomic(array: np.ndarray | torch.Tensor, affine: np.ndarray | None, target: str | os.PathLike,
                       dtype: Any = np.float32, overwrite: bool = False, like: Any = None) -> Path:
    """Write an array as NIfTI atomically (see :func:`atomic_path`).

    With ``like`` (the input file, or its loaded nibabel image), the output takes that file's header: qform and sform with their codes,
    so every reader (nibabel, ITK / 3D Slicer) puts the output exactly where it puts the input, whatever
    the axis order, obliquity or header codes; the array is reshaped to the input's shape (e.g. ``(X, Y,
    Z, 1)``).  Without it, ``affine`` is written as both qform and sform (code 1, scanner).
    """
    arr = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array).astype(dtype)
    if like is not None:
        src = like if hasattr(like, "header") else nib.load(str(like))
        if int(np.prod(src.shape)) == arr.size and src.shape != arr.shape:
            arr = arr.reshape(src.shape)
        header = src.header.copy()
        header.set_data_dtype(dtype)
        out = type(src)(arr, None, header=header)
        out.header.set_slope_inter(1.0, 0.0)
    else:
        out = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
        out.header.set_data_dtype(dtype)
        out.set_qform(np.asarray(affine, dtype=np.float64), code=1)
        out.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    with atomic_path(target, overwrite) as tmp:
        nib.save(out, str(tmp))
    return Path(target)


class ExactNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` without its header "repair".

    MONAI rewrites a header whose sform voxel sizes differ from ``pixdim`` (for example a valid sform with
    code 2 next to an identity qform with code 0 loses its origin and spacing).  This reader keeps the
    geometry exactly as nibabel states it (the sform when its code is set, else the qform), which is where
    3D Slicer / ITK put the image too; headers that are really broken are refused by
    :func:`geometry_problem` instead of being guessed.
    """

    def read(self, data, **kwargs):  # noqa: D102 - as NibabelReader.read, minus correct_nifti_header_if_necessary
        kw = {**self.kwargs, **kwargs}
        images = [nib.load(str(name), **kw) for name in ensure_tuple(data)]
        self.filenames = ensure_tuple(data)
        return images if len(images) > 1 else images[0]


def geometry_problem(hdr: Any) -> str | None:
    """Why a NIfTI header's geometry is unusable, or ``None``: a singular sform or qform in use, zero voxel sizes."""
    zooms = hdr.get_zooms()[:3]
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        return f"voxel sizes {tuple(float(z) for z in zooms)} are not positive: the geometry is undefined."
    for name, code_key, get in (("sform", "sform_code", hdr.get_sform), ("qform", "qform_code", hdr.get_qform)):
        if int(hdr[code_key]) > 0:
            m = np.asarray(get(), dtype=np.float64)
            if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
                return f"the {name} (code {int(hdr[code_key])}) is singular or not finite: the geometry is undefined; fix the header."
            break  # the transform in use is the first one with a code
    return None


def world_is_defined(hdr: Any) -> bool:
    """Whether a NIfTI header states a world frame (qform or sform code > 0)."""
    return int(hdr["sform_code"]) > 0 or int(hdr["qform_code"]) > 0


def write_text_atomic(text: str, target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write text to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, overwrite) as tmp:
        tmp.write_text(text)
    return Path(target)
