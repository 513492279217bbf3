"""Atomic output files: a result is complete or absent, never partial, never silently overwritten."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

__all__ = ["current_umask", "TMP_PATTERN", "remove_stale_temporaries", "atomic_path", "write_nifti_atomic", "write_text_atomic"]


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


def write_text_atomic(text: str, target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write text to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, overwrite) as tmp:
        tmp.write_text(text)
    return Path(target)
