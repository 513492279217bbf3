"""Helpers for the bundle configs."""

from __future__ import annotations

from typing import Any

from monai.utils import str2bool

__all__ = ["flag", "parse_clicked_windows_only"]


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
