"""Helpers for the bundle configs."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from monai.utils import str2bool

__all__ = ["find_bundle_root", "flag", "parse_clicked_windows_only"]


def find_bundle_root(default: str = ".", argv: list[str] | None = None) -> str:
    """The bundle folder of the config file given to ``python -m monai.bundle run ... --config_file X``.

    MONAI does not define ``bundle_root`` by itself; the configs use this so that ``models/model.pt`` is
    found next to ``configs/`` wherever the command is run from.  ``--bundle_root`` on the command line
    still overrides it.

    Args:
        default: returned when no ``--config_file`` is on the command line (e.g. MONAI Label, which sets
            ``bundle_root`` itself).
        argv: command line to inspect (default ``sys.argv``).
    """
    args = sys.argv if argv is None else argv
    for i, arg in enumerate(args):
        value = None
        if arg == "--config_file" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        if value.strip().startswith("["):
            try:
                value = ast.literal_eval(value)[0]
            except (ValueError, SyntaxError, IndexError):
                return default
        cfg_dir = Path(value).resolve().parent
        return str(cfg_dir.parent if cfg_dir.name == "configs" else cfg_dir)
    return default


def flag(value: Any) -> bool:
    """A config or command-line boolean through :func:`monai.utils.str2bool`.

    The command line delivers ``--overwrite false`` as the string ``"false"`` and ``--overwrite 1`` as the
    int 1; both are read as str2bool reads their text.  Anything else (``None``, ``"maybe"``) is a
    ``ValueError`` naming the value.
    """
    return value if isinstance(value, bool) else str2bool(str(value).strip())


def parse_clicked_windows_only(value: Any) -> bool | str:
    """The ``clicked_windows_only`` setting: ``True`` / ``False`` (also as command-line strings) or ``"auto"``
    (see :class:`sat3d.session.InteractiveSession`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return flag(value)
