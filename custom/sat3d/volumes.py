"""Input volumes: listing a folder's NIfTI files, case names, the exact NIfTI reader and header checks."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import NibabelReader
from monai.utils import ensure_tuple

__all__ = ["NIFTI_SUFFIXES", "case_name", "OUTPUT_SUFFIXES", "list_volumes", "ExactNibabelReader", "geometry_problem", "world_is_defined"]


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


class ExactNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` without its header "repair", optionally keeping decoded volumes.

    MONAI rewrites a header whose sform voxel sizes differ from ``pixdim`` (for example a valid sform with
    code 2 next to an identity qform with code 0 loses its origin and spacing).  This reader keeps the
    geometry exactly as nibabel states it (the sform when its code is set, else the qform), which is where
    3D Slicer / ITK put the image too; headers that are really broken are refused by
    :func:`geometry_problem` instead of being guessed.

    With ``cache_size`` > 0 the decoded voxels of the last ``cache_size`` files are kept, keyed by path,
    modification time and size, and each read gets its own copy: MONAI Label reads the same study for every
    click, and decompressing a 256x256x160 ``.nii.gz`` takes about half a second on the 2-core CPU.

    Args:
        cache_size: files whose decoded voxels are kept (0: none).
        args, kwargs: as :class:`monai.data.NibabelReader`.
    """

    def __init__(self, *args: Any, cache_size: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(cache_size) < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}.")
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        #: reads answered from the cache (for tests and benchmarks)
        self.hits = 0

    def read(self, data, **kwargs):  # noqa: D102 - as NibabelReader.read, minus correct_nifti_header_if_necessary
        kw = {**self.kwargs, **kwargs}
        images = [self._load(str(name), kw) for name in ensure_tuple(data)]
        self.filenames = ensure_tuple(data)
        return images if len(images) > 1 else images[0]

    def _load(self, name: str, kw: dict) -> Any:
        if self.cache_size == 0:
            return nib.load(name, **kw)
        st = os.stat(name)
        key = (os.path.realpath(name), st.st_mtime_ns, st.st_size, tuple(sorted(kw.items())))
        img = nib.load(name, **kw)  # header and geometry as stored (cheap: the voxels are not decoded yet)
        if key in self._cache:
            self._cache.move_to_end(key)
            voxels = self._cache[key]
            self.hits += 1
        else:
            voxels = self._cache[key] = np.asanyarray(img.dataobj)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        img._dataobj = voxels.copy()  # noqa: SLF001 - the decoded voxels, as np.asanyarray(img.dataobj) gives them
        return img


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
