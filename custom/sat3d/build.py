"""Named presets of SAT3D and the builder used by the bundle configs."""

from __future__ import annotations

import copy
from typing import Any

from .constants import CONFIDENCE_THRESHOLD
from .modeling import SAT3D, AutoHead3D, Critic3D, MaskDecoder3D, PromptEncoder3D, SwinImageEncoder3D

__all__ = ["PRESETS", "PRESET_BASES", "build_sat3d"]

#: Preset name -> keyword arguments of the parts (``encoder``, ``prompt``, ``decoder``, ``critic``).
#: ``sat3d_base`` follows the paper (11.1 M parameters) with the authors' defects fixed.  ``sat3d_paper``
#: switches those parts back to the authors' implementation; it exists only to run their published
#: weights (see :mod:`sat3d.convert`), not for training.
PRESETS: dict[str, dict[str, Any]] = {
    "sat3d_base": {
        "roi_size": (128, 128, 128),
        "encoder": {"embed_dim": 48, "depths": (2, 2, 2, 1), "num_heads": (3, 6, 12, 24), "window_size": 8, "patch_size": 2},
        "prompt": {},
        "decoder": {"depth": 2, "num_heads": 8, "mlp_dim": 2048, "upscale_channels": (96, 48)},
        "critic": {"channels": (8, 16, 32), "dilations": (1, 2, 4)},
    },
    "sat3d_paper": {
        "roi_size": (128, 128, 128),
        "encoder": {"embed_dim": 48, "depths": (2, 2, 2, 1), "num_heads": (3, 6, 12, 24), "window_size": 8, "patch_size": 2,
                    "merging": "paper"},
        "prompt": {"positional_encoding": "paper", "dense_norm": "layer"},
        "decoder": {"depth": 2, "num_heads": 8, "mlp_dim": 2048, "upscale_channels": (96, 48), "num_mask_tokens": 4,
                    "upscale_norm": "layer"},
        "critic": {"design": "paper", "channels": (16, 32, 64)},
    },
    # Small network for unit tests and CPU smoke runs on 32^3 crops; not meant to segment anything.
    "sat3d_tiny": {
        "roi_size": (32, 32, 32),
        "encoder": {"embed_dim": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 4, "patch_size": 2},
        "prompt": {},
        "decoder": {"depth": 1, "num_heads": 4, "mlp_dim": 128, "upscale_channels": (24, 12)},
        "critic": {"channels": (4, 8, 8), "dilations": (1,)},
    },
}

#: preset -> (preset whose weights it can start from, prefix of the parameters it adds).  The added parameters
#: keep their initialisation, which makes the grown network compute what the smaller one computed.
PRESET_BASES: dict[str, tuple[str, str]] = {"sat3d_detail": ("sat3d_base", "mask_decoder.detail."),
                                            "sat3d_geodesic": ("sat3d_detail", "mask_decoder.click_detail."),
                                            "sat3d_auto": ("sat3d_geodesic", "auto_head.")}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# sat3d_base plus a shallow conv branch that adds crop detail to the decoder's upsampling (not in the paper;
# see sat3d.modeling.detail_encoder).  Derived from sat3d_base, so the two cannot drift apart: it starts as an
# exact copy of it (zero-initialised projections) and fine-tunes from its weights (PRESET_BASES).
PRESETS["sat3d_detail"] = _merge(PRESETS["sat3d_base"], {"decoder": {"detail_channels": (16, 32, 64)}})

# sat3d_detail plus a conv branch on geodesic click maps (where the clicked region extends along the image;
# see sat3d.modeling.geodesic), added like the detail branch.  Not in the paper.  A Euclidean click carries no
# hint of the object's edge, and every CPU-trained sat3d_detail network learnt a typical mask size around
# the click instead of the lesion's.  Zero-initialised projections: it starts as an exact copy of
# sat3d_detail and fine-tunes from its weights (PRESET_BASES).
PRESETS["sat3d_geodesic"] = _merge(PRESETS["sat3d_detail"], {"decoder": {
    "click_detail_channels": (8, 16, 32),
    "geodesic": {"gamma": 20.0, "scale": 4.0, "pool": 2, "iterations": 24},
}})

# sat3d_geodesic plus a conv head for the automatic mode only (see sat3d.modeling.auto_head): the clicks never
# pass through it.  Not in the paper.  Zero-initialised outputs: it starts as an exact copy of sat3d_geodesic
# and is trained from its weights with everything else frozen (train.json's ``trainable``).
PRESETS["sat3d_auto"] = _merge(PRESETS["sat3d_geodesic"], {"auto_head": {
    "image_channels": (16, 32), "embed_channels": 64, "channels": 64, "dilations": (1, 2, 4),
}})


def build_sat3d(
    preset: str = "sat3d_base",
    in_channels: int = 1,
    confidence_threshold: float = CONFIDENCE_THRESHOLD,
    overrides: dict | None = None,
    use_checkpoint: bool = False,
    forward_output: str = "dict",
) -> SAT3D:
    """Build a SAT3D network from a named preset.

    Args:
        preset: a key of :data:`PRESETS`.
        in_channels: image channels.
        confidence_threshold: the critic's binarisation threshold T.
        overrides: nested dict merged into the preset, e.g. ``{"roi_size": (96, 96, 96)}``.
        use_checkpoint: gradient checkpointing in the Swin blocks.
        forward_output: ``"dict"`` or ``"logits"``, see :class:`sat3d.SAT3D`.

    Returns:
        the network (random weights).

    Raises:
        ValueError: for an unknown preset or a ``roi_size`` that the encoder cannot tile.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown SAT3D preset {preset!r}; choose one of {sorted(PRESETS)}.")
    cfg = _merge(PRESETS[preset], overrides or {})
    roi = tuple(int(s) for s in cfg["roi_size"])
    if len(roi) != 3:
        raise ValueError(f"roi_size must have 3 entries, got {roi}.")
    encoder = SwinImageEncoder3D(in_channels=in_channels, use_checkpoint=use_checkpoint, **cfg["encoder"])
    if any(s % encoder.stride for s in roi):
        raise ValueError(f"roi_size {roi} must be a multiple of the encoder stride {encoder.stride}.")
    grid = tuple(s // encoder.stride for s in roi)
    prompt = PromptEncoder3D(embed_dim=encoder.out_channels, embedding_size=grid, input_size=roi, **cfg.get("prompt", {}))
    decoder = MaskDecoder3D(embed_dim=encoder.out_channels, in_channels=in_channels, **cfg["decoder"])
    critic = Critic3D(in_channels=in_channels, **cfg["critic"])
    auto = None if cfg.get("auto_head") is None else AutoHead3D(in_channels, encoder.out_channels, **cfg["auto_head"])
    return SAT3D(encoder, prompt, decoder, critic, confidence_threshold=confidence_threshold, forward_output=forward_output,
                 auto_head=auto)
