"""SAT3D model parts, one file each (as in segment-anything's ``modeling/``)."""

from .auto_head import AutoHead3D
from .critic import Critic3D
from .image_encoder import SwinImageEncoder3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import DenseBranch, PromptEncoder3D
from .sat3d import SAT3D

__all__ = ["SAT3D", "SwinImageEncoder3D", "PromptEncoder3D", "DenseBranch", "MaskDecoder3D", "Critic3D", "AutoHead3D"]
