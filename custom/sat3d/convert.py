"""Convert the authors' published SAT3D checkpoints into a weights file of this bundle.

The authors (github.com/himashi92/SAT3D) publish two files per model: ``sam_model_*.pth`` (image encoder,
prompt encoder, mask decoder) and ``critic_*.pth`` (the critic), both written by their ``train_sat3D.py``
as a dict with ``model_state_dict`` (keys prefixed ``module.``) and a pickled ``argparse.Namespace``.
This module reads them safely (``weights_only`` loading with only ``argparse.Namespace`` allowed, on the
CPU), renames every tensor to the ``sat3d_paper`` preset, checks that nothing is missing, unexpected or
misshaped, and writes a ``model.pt`` whose configuration selects the authors' click protocol and
preprocessing (see :mod:`sat3d.protocols`), so inference, the session and MONAI Label run it without flags.

Usage::

    python -m sat3d.convert sam_model_best.pth critic_best.pth bundle/models/model_paper.pt
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_authors_checkpoint", "convert_state_dicts", "convert", "PAPER_CONFIG"]

#: configuration written with converted weights: the authors' 128^3 crops on the native grid, their
#: per-window z-normalisation (over voxels > 0, unbiased std; CT clamped to [-1000, 1000]), their click
#: protocol and their binarisation of the confidence (sigmoid > 0.5)
PAPER_CONFIG: dict[str, Any] = {
    "preset": "sat3d_paper",
    "roi_size": [128, 128, 128],
    "spacing": None,
    "intensity": {"name": "window_zscore_positive", "ct_clamp": [-1000.0, 1000.0]},
    "confidence_threshold": 0.5,
    "mask_threshold": 0.5,
    "protocol": "paper",
}

# authors' keys that the paper network does not use (their code never reads them either)
_UNUSED = (
    re.compile(r"^image_encoder\.norm_up\."),
    re.compile(r"^mask_decoder\.output_hypernetworks_mlps\.[123]\."),
)
_RENAMES = (
    (re.compile(r"^image_encoder\.layers\.(\d+)\."), r"image_encoder.stages.\1."),
    (re.compile(r"^(image_encoder\..*\.mlp)\.fc([12])\."), r"\1.linear\2."),
    (re.compile(r"^(mask_decoder\.transformer\..*\.mlp)\.lin([12])\."), r"\1.linear\2."),
    (re.compile(r"^prompt_encoder\.mask_downscaling\."), "prompt_encoder.mask_branch.net."),
    (re.compile(r"^prompt_encoder\.conf_downscaling\."), "prompt_encoder.confidence_branch.net."),
    (re.compile(r"^mask_decoder\.mask_tokens\."), "mask_decoder.mask_token."),
    (re.compile(r"^mask_decoder\.output_hypernetworks_mlps\.0\."), "mask_decoder.hypernetwork."),
    (re.compile(r"^mask_decoder\.iou_prediction_head\."), "mask_decoder.iou_head."),
)
_CRITIC = re.compile(r"^conv([1-4])\.([01])\.(.+)$")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (wrong file, truncated, other architecture)."""


def load_authors_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read one of the authors' ``.pth`` files and return its state dict without the ``module.`` prefix.

    Loading is restricted (``weights_only=True``) with only ``argparse.Namespace`` allowed besides tensors,
    and mapped to the CPU (their files are tagged ``cuda:0``).  Floating tensors are returned as float32.

    Raises:
        ConversionError: naming the file, if it cannot be read or holds no ``model_state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip archives, disallowed globals
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({first}).") from None
    if isinstance(ckpt, Mapping) and "model_state_dict" in ckpt:
        sd = ckpt["model_state_dict"]
    elif isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt  # a bare state dict
    else:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ConversionError(f"{path}: no 'model_state_dict' in the checkpoint (found {keys}).")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ConversionError(f"{path}: entry {k!r} is not a tensor.")
        out[k[len("module."):] if k.startswith("module.") else k] = v.float() if v.is_floating_point() else v
    return out


def _rename_model_key(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def convert_state_dicts(
    model_sd: Mapping[str, torch.Tensor], critic_sd: Mapping[str, torch.Tensor], network: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Map the authors' two state dicts onto ``network`` (a ``sat3d_paper`` SAT3D) and check them strictly.

    Renames: ``image_encoder.layers.i`` -> ``stages.i``, Swin ``mlp.fc1/2`` and decoder ``mlp.lin1/2`` ->
    ``linear1/2``, ``mask_downscaling``/``conf_downscaling`` -> the two dense branches, ``no_mask_embed``
    ``(1, E)`` -> its mask and confidence halves, ``mask_tokens`` -> ``mask_token`` (all four take part in
    attention), ``output_hypernetworks_mlps.0`` -> ``hypernetwork``, row 0 of ``iou_prediction_head``, and the
    critic's ``conv{1-4}.{0,1}`` -> ``critic.body.{0-3}.{0,1}``.  ``norm_up`` and hypernetworks 1-3 are unused
    by the authors' forward pass and dropped.  Swin ``relative_position_index`` buffers must equal the
    network's own.

    Returns:
        a state dict that ``network.load_state_dict(..., strict=True)`` accepts.

    Raises:
        ConversionError: listing missing, unexpected and misshaped entries.
    """
    target = network.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected, shape_errors = [], []

    def put(key: str, value: torch.Tensor, source: str) -> None:
        if key not in target:
            unexpected.append(source)
        elif tuple(target[key].shape) != tuple(value.shape):
            shape_errors.append(f"{source} {tuple(value.shape)} -> {key} {tuple(target[key].shape)}")
        else:
            out[key] = value.to(target[key].dtype)

    for key, value in model_sd.items():
        if any(p.search(key) for p in _UNUSED):
            continue
        if key == "prompt_encoder.no_mask_embed.weight":
            half = target["prompt_encoder.no_mask_embed.weight"].shape[1]
            put("prompt_encoder.no_mask_embed.weight", value[:, :half], key)
            put("prompt_encoder.no_confidence_embed.weight", value[:, half:], key)
            continue
        if key.startswith("mask_decoder.iou_prediction_head.layers.") and key.rsplit(".", 2)[-2] == "2":
            value = value[:1]  # the authors read only the first of their four IoU outputs
        name = _rename_model_key(key)
        if name.endswith("relative_position_index"):
            if name in target and not torch.equal(target[name], value.to(target[name].dtype)):
                shape_errors.append(f"{key}: relative position index differs from the network's")
        put(name, value, key)
    for key, value in critic_sd.items():
        m = _CRITIC.match(key)
        if not m:
            unexpected.append(f"critic:{key}")
            continue
        put(f"critic.body.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}", value, f"critic:{key}")
    missing = sorted(set(target) - set(out))
    if missing or unexpected or shape_errors:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
        if shape_errors:
            parts.append(f"wrong shape {len(shape_errors)}: {'; '.join(shape_errors[:4])}")
        raise ConversionError("the checkpoints do not fit the sat3d_paper network: " + " | ".join(parts))
    return out


def convert(model_path: str | Path, critic_path: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Convert the authors' ``sam_model_*.pth`` and ``critic_*.pth`` into a bundle weights file at ``output``.

    The network is rebuilt, loaded strictly and written with :data:`PAPER_CONFIG` (float16 storage is not
    used: the authors' float32 values are kept).  Returns the written configuration.

    Raises:
        ConversionError: for unreadable or non-matching checkpoints, or an existing ``output`` without
            ``overwrite``.
    """
    from . import __version__
    from .build import build_sat3d
    from .weights import save_weights

    output = Path(output)
    if output.exists() and not overwrite:
        raise ConversionError(f"{output} exists; pass --overwrite to replace it.")
    model_sd = load_authors_checkpoint(model_path)
    critic_sd = load_authors_checkpoint(critic_path)
    if not any(k.startswith("image_encoder.") for k in model_sd):
        raise ConversionError(f"{model_path}: no image_encoder weights; is it the sam_model_*.pth file?")
    if any(k.startswith("image_encoder.") for k in critic_sd):
        raise ConversionError(f"{critic_path}: holds image_encoder weights; pass the critic_*.pth file second.")
    network = build_sat3d(PAPER_CONFIG["preset"], confidence_threshold=PAPER_CONFIG["confidence_threshold"])
    try:
        network.load_state_dict(convert_state_dicts(model_sd, critic_sd, network), strict=True)
    except ConversionError as e:
        raise ConversionError(f"{model_path} + {critic_path}: {e}") from None
    config = dict(PAPER_CONFIG)
    config["version"] = f"authors' SAT3D weights, converted by sat3d {__version__}"
    config["training"] = f"published by the SAT3D authors ({Path(model_path).name}, {Path(critic_path).name}); not trained here"
    save_weights(network, output, config, half=False)
    return config


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m sat3d.convert MODEL.pth CRITIC.pth OUTPUT.pt [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m sat3d.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the authors' sam_model_*.pth")
    parser.add_argument("critic", help="the authors' critic_*.pth")
    parser.add_argument("output", help="weights file to write (e.g. bundle/models/model.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        config = convert(args.model, args.critic, args.output, overwrite=args.overwrite)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: preset {config['preset']}, protocol {config['protocol']}, roi {config['roi_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
