"""Export a stand-alone SAT3D bundle: configs, docs, weights and a copy of the ``sat3d`` package.

Usage::

    python -m sat3d.export --output DIR [--bundle bundle/] [--force]

The exported folder needs only MONAI and its dependencies (no ``pip install`` of this project):
``python -m monai.bundle run inference --config_file DIR/configs/inference.json ...`` puts ``DIR`` on
``sys.path`` before the configs resolve their ``sat3d.*`` components, so the copy in ``DIR/sat3d`` is used.
It can be dropped into a MONAI Label ``--conf models`` folder or shared like a model-zoo bundle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import sat3d
from sat3d.atomic import current_umask

__all__ = ["export_bundle", "default_bundle_dir"]

BUNDLE_ITEMS = ("configs", "docs", "models", "scripts", "LICENSE")


def default_bundle_dir() -> Path:
    """``bundle/`` of the source checkout this package was installed from (editable install)."""
    return Path(sat3d.__file__).resolve().parents[2] / "bundle"


def export_bundle(output: str | Path, bundle_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write the stand-alone bundle to ``output`` (built in a temporary folder, then moved in place).

    Args:
        output: target folder; must not exist or be empty unless ``force``.
        bundle_dir: source bundle folder (default: :func:`default_bundle_dir`).
        force: replace a non-empty ``output``.

    Returns:
        the output folder.

    Raises:
        ValueError: if the source bundle is incomplete or ``output`` is not empty and ``force`` is false.
    """
    src = Path(bundle_dir) if bundle_dir else default_bundle_dir()
    if not (src / "configs" / "inference.json").is_file():
        raise ValueError(f"{src} is not a SAT3D bundle folder (configs/inference.json missing); pass --bundle.")
    out = Path(output).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ValueError(f"{out} exists and is not empty; use --force to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for item in BUNDLE_ITEMS:
            s = src / item
            if s.is_dir():
                # models/experimental holds weights that are not fit for use: they stay in the repository
                shutil.copytree(s, tmp / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "experimental"))
            elif s.is_file():
                shutil.copy2(s, tmp / item)
        (tmp / "models").mkdir(exist_ok=True)
        pkg = Path(sat3d.__file__).resolve().parent
        shutil.copytree(pkg, tmp / "sat3d", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the bundle must be readable like any folder the user makes
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sat3d.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder to write the bundle to")
    p.add_argument("--bundle", default=None, help="source bundle folder (default: the checkout's bundle/)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    args = p.parse_args(argv)
    try:
        out = export_bundle(args.output, args.bundle, args.force)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    has_weights = (out / "models" / "model.pt").is_file()
    print(f"exported SAT3D bundle to {out}" + ("" if has_weights else " (no models/model.pt: add weights before use)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
