"""SAT3D: uncertainty-aware, promptable 3D tumour segmentation (MONAI bundle code)."""

from .build import PRESETS, build_sat3d
from .modeling import SAT3D, Critic3D, MaskDecoder3D, PromptEncoder3D, SwinImageEncoder3D

__version__ = "0.1.0"

__all__ = ["SAT3D", "Critic3D", "MaskDecoder3D", "PromptEncoder3D", "SwinImageEncoder3D", "PRESETS", "build_sat3d"]
