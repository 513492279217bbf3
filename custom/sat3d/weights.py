"""SAT3D weights files: the state dict together with the configuration the weights need.

A weights file (``model.pt``) is a dict::

    {"format": "sat3d-weights", "format_version": 1,
     "config": {"preset": "sat3d_base", "roi_size": [64, 64, 64], "spacing": [1.5, 1.5, 1.5],
                "intensity": {"name": "foreground_zscore", "clip": 5.0}, "confidence_threshold": 0.3,
                "mask_threshold": 0.5, "protocol": "sat3d", "version": "...", "training": "one line"},
     "state_dict": {...}}   # float16 or float32 tensors; loaded as float32

Inference, evaluation, the interactive session and the MONAI Label path read ``config`` from the file
(:func:`read_config`) and refuse settings that contradict it (:func:`check_config`), so a model cannot be run
with the wrong window, spacing, normalisation or thresholds.  A plain state dict (older files, training
checkpoints) is still accepted, with a warning that nothing can be checked.

``python -m sat3d.weights show FILE`` prints a file's configuration; ``python -m sat3d.weights pack CHECKPOINT
OUTPUT --config JSON`` writes a weights file from a training checkpoint; ``python -m sat3d.weights average
OUTPUT FILE FILE ... [--config JSON]`` writes the mean of several weights files of one network (e.g. the last
checkpoints of a run: a flatter, steadier model than any one of them).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .constants import CONFIDENCE_THRESHOLD, MASK_THRESHOLD

__all__ = [
    "WEIGHTS_FORMAT",
    "DEFAULT_CONFIG",
    "save_weights",
    "read_weights",
    "read_config",
    "check_config",
    "load_weights",
]

logger = logging.getLogger("sat3d.weights")

WEIGHTS_FORMAT = "sat3d-weights"
FORMAT_VERSION = 1

#: configuration assumed for files that carry none and for runs without weights (random-weight tests)
DEFAULT_CONFIG: dict[str, Any] = {
    "preset": "sat3d_base",
    "roi_size": [64, 64, 64],
    "spacing": [1.5, 1.5, 1.5],
    "intensity": {"name": "foreground_zscore", "clip": 5.0},
    "confidence_threshold": CONFIDENCE_THRESHOLD,
    "mask_threshold": MASK_THRESHOLD,
    "protocol": "sat3d",
    "click_prompt_radius": 0,
}
#: buffers a network computes from its own configuration (Swin relative-position indices: 7 x 2 MB of
#: int64); weights files leave them out and loading takes them from the network being loaded
DERIVED_BUFFERS = ("relative_position_index",)
#: keys a run's settings are checked against
CHECKED_KEYS = ("preset", "roi_size", "spacing", "intensity", "confidence_threshold", "mask_threshold", "protocol",
                "click_prompt_radius")
#: checked keys that fine-tuning may change (the new run learns the new setting; the window too: the Swin
#: encoder's weights do not depend on the crop size, and a run at 128^3 continues from weights of 64^3)
FINE_TUNABLE_KEYS = ("click_prompt_radius", "roi_size")


def _norm(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _norm(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def _derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFERS


def optional_path(value: Any) -> Path | None:
    """A path from a config or command-line value; ``None``, ``""`` and ``"none"`` mean no file."""
    return None if value is None or str(value).strip().lower() in ("", "none") else Path(value)


def save_weights(network_or_state: torch.nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                 config: Mapping[str, Any], half: bool = True) -> Path:
    """Write a weights file atomically (see :mod:`sat3d.weights`); ``half`` stores float tensors as float16."""
    from .atomic import atomic_path

    state = network_or_state.state_dict() if isinstance(network_or_state, torch.nn.Module) else dict(network_or_state)
    state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
             for k, v in state.items() if not _derived(k)}
    cfg = {**DEFAULT_CONFIG, **_norm(dict(config))}
    if "version" not in cfg:
        from . import __version__

        cfg["version"] = __version__
    with atomic_path(path, overwrite=True) as tmp:
        torch.save({"format": WEIGHTS_FORMAT, "format_version": FORMAT_VERSION, "config": cfg, "state_dict": state}, tmp)
    return Path(path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Load a weights file safely (``weights_only``, CPU) -> (float32 state dict, config or ``None``).

    Accepts a weights file, a plain state dict, or a training checkpoint (state dict under ``"network"``).

    Raises:
        ValueError: naming the file when it is not a SAT3D weights file or cannot be read.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a folder, not a SAT3D weights file.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for non-checkpoints
        raise ValueError(f"{p} is not a readable SAT3D weights file ({type(e).__name__}: {' '.join(str(e).split())[:200]}).") from None
    config = None
    if isinstance(obj, dict) and obj.get("format") == WEIGHTS_FORMAT:
        if int(obj.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{p} has weights format {obj.get('format_version')}; this sat3d reads up to {FORMAT_VERSION}: update sat3d.")
        state, config = obj.get("state_dict"), dict(obj.get("config") or {})
    elif isinstance(obj, dict) and isinstance(obj.get("network"), dict):
        state = obj["network"]
    else:
        state = obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p} holds no SAT3D state dict (expected tensors keyed by parameter name).")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, config


def read_config(path: str | Path | None = None, require: bool | str = True) -> dict[str, Any]:
    """The configuration stored with the weights at ``path`` (for the bundle configs).

    Returns :data:`DEFAULT_CONFIG` when the file carries none, or when there is no file and ``require``
    is false (random-weight testing); a missing file with ``require`` is reported later by
    :func:`load_weights` with the full message, so this returns the defaults then too.
    """
    p = optional_path(path)
    if p is None or not p.is_file():
        return dict(DEFAULT_CONFIG)
    try:
        _, config = read_weights(p)
    except ValueError:
        return dict(DEFAULT_CONFIG)  # load_weights names the file and the problem when the run starts
    return {**DEFAULT_CONFIG, **config} if config else dict(DEFAULT_CONFIG)


def check_config(config: Mapping[str, Any] | None, source: str, **settings: Any) -> None:
    """Raise ``ValueError`` when a run's ``settings`` contradict the weights' ``config``.

    Args:
        config: the weights' configuration (``None``: nothing to check).
        source: the weights file, named in the message.
        settings: the run's values, keyed like the config (``roi_size=[64, 64, 64]``, ...); ``None`` values
            are not checked.
    """
    if not config:
        return
    bad = []
    for key, value in settings.items():
        if value is None or key not in config:
            continue
        if not _same(value, config[key]):
            bad.append(f"{key} {json.dumps(_norm(value))} (weights: {json.dumps(_norm(config[key]))})")
    if bad:
        raise ValueError(
            f"the settings contradict the weights in {source}: " + "; ".join(bad)
            + ". These weights only work with their own settings: drop the overrides."
        )


def load_weights(network: torch.nn.Module, ckpt_path: str | Path | None, require: bool = True,
                 expect: Mapping[str, Any] | None = None, grow: bool = False) -> dict[str, Any] | None:
    """Load weights into ``network`` after checking the run's settings ``expect`` against the file's config.

    With ``grow`` (fine-tuning only), weights of a smaller preset load into a preset built on it
    (:data:`sat3d.build.PRESET_BASES`, e.g. ``sat3d_base`` into ``sat3d_detail``): the added parameters
    keep their initialisation and every other parameter must match as usual.

    Returns:
        the file's config (``None`` for a plain state dict), or ``None`` when no weights were loaded.

    Raises:
        FileNotFoundError: if ``require`` and there is no file at ``ckpt_path``.
        ValueError: for a file that is not SAT3D weights, settings that contradict it, or parameters
            that do not match the network (missing / unexpected / wrong shape, named).
    """
    path = optional_path(ckpt_path)
    if path is None or not path.exists():
        msg = (
            f"no SAT3D weights at {path}. No trained weights are shipped yet (see bundle/docs/README.md): "
            "pass --ckpt_path to weights you trained with the train workflow, or to the authors' published SAT3D "
            "weights converted with 'python -m sat3d.convert', or, to try the experimental CPU-trained weights "
            "(below a usable model on the demo; see the model card), to "
            "bundle/models/experimental/sat3d_cpu_run19.pt. "
            "Set require_weights to false only for testing with random weights."
        )
        if require:
            raise FileNotFoundError(msg)
        logger.warning("%s Using RANDOM weights: the masks are meaningless.", msg)
        return None
    state, config = read_weights(path)
    if config is None:
        logger.warning("%s carries no configuration (plain state dict): window, spacing and thresholds cannot be checked.", path)
    expect = dict(expect or {})
    added = ""
    if grow and config is not None and expect.get("preset") is not None:
        from .build import PRESET_BASES

        base, prefix = PRESET_BASES.get(str(expect["preset"]), (None, ""))
        if config.get("preset") == base:
            expect.pop("preset")
            added = prefix
    if config is not None:
        check_config(config, str(path), **expect)
    own = network.state_dict()
    state = {**{k: own[k] for k in own if _derived(k) and k not in state}, **state}
    if added:
        new = [k for k in own if k.startswith(added) and k not in state]
        state.update({k: own[k] for k in new})
        logger.info("%s holds %s weights: %d added parameter tensors (%s*) keep their initialisation.",
                    path, config.get("preset"), len(new), added)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[:2]})")
        raise ValueError(f"{path} does not fit this network: " + "; ".join(parts) + ".")
    network.load_state_dict(state)
    logger.info("loaded weights from %s%s", path, f" ({config.get('training')})" if config and config.get("training") else "")
    return config


def average_weights(paths: list[str | Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The parameter-wise mean of several weights files of one network -> (float32 state dict, first config).

    Integer buffers are taken from the first file.  Raises ``ValueError`` naming the file whose parameters or
    window (``preset``, ``roi_size``) differ from the first's.
    """
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two weights files, got {len(paths)}.")
    first, config = read_weights(paths[0])
    total = {k: v.clone() for k, v in first.items()}
    for p in paths[1:]:
        state, cfg = read_weights(p)
        if set(state) != set(first) or any(state[k].shape != first[k].shape for k in first):
            raise ValueError(f"{p}: its parameters differ from those of {paths[0]}; only weights of one network can be averaged.")
        for key in ("preset", "roi_size"):
            if config and cfg and not _same(config.get(key), cfg.get(key)):
                raise ValueError(f"{p}: {key} {cfg.get(key)!r} differs from {config.get(key)!r} of {paths[0]}.")
        for k, v in state.items():
            if v.is_floating_point():
                total[k] += v
    return {k: (v / len(paths) if v.is_floating_point() else v) for k, v in total.items()}, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sat3d.weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    show = sub.add_parser("show", help="print the configuration stored in a weights file")
    show.add_argument("path")
    pack = sub.add_parser("pack", help="write a weights file (fp16) from a training checkpoint or state dict")
    pack.add_argument("checkpoint")
    pack.add_argument("output")
    pack.add_argument("--config", required=True, help="JSON object merged into the defaults (roi_size, spacing, training, ...)")
    pack.add_argument("--float32", action="store_true", help="store float32 instead of float16")
    avg = sub.add_parser("average", help="write the mean of several weights files of one network (fp16)")
    avg.add_argument("output")
    avg.add_argument("inputs", nargs="+")
    avg.add_argument("--config", default="{}", help="JSON object merged into the first file's configuration")
    args = parser.parse_args(argv)
    if args.cmd == "average":
        state, cfg = average_weights(args.inputs)
        save_weights(state, args.output, {**(cfg or {}), **json.loads(args.config)})
        print(f"wrote {args.output}: the mean of {len(args.inputs)} files: {json.dumps(read_config(args.output))}")
    elif args.cmd == "pack":
        state, cfg = read_weights(args.checkpoint)
        config = {**(cfg or {}), **json.loads(args.config)}
        save_weights(state, args.output, config, half=not args.float32)
        print(f"wrote {args.output}: {json.dumps(read_config(args.output))}")
    elif args.cmd == "show":
        print(json.dumps(read_config(args.path), indent=2))
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
